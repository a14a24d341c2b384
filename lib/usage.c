#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "jsonb.h"
#include "jsonget.h"
#include "limits.h"
#include "log.h"
#include "response.h"
#include "usage.h"

/* The schema's billing_usage_types(), in display order. */
static const char *const usage_types[] = {
    "pain_entry", "mood_entry", "activity_log", "export", "storage", NULL,
};

/*
 * POST /api/usage body.  A JSON null counts as absent for the optional
 * members (amount defaults to 1).  metadata is validated and takes part
 * in the idempotency comparison but is not stored: usage_tracking holds
 * monthly counters, not events.
 */
static const struct jsonget_field record_fields[] = {
    {"userId", JG_STRING, 1, 1, LIMIT_USER_ID_LEN, NULL},
    {"usageType", JG_STRING, 1, 1, LIMIT_CHOICE_LEN, usage_types},
    {"amount", JG_INT, 0, 1, LIMIT_USAGE_AMOUNT, NULL},
    {"metadata", JG_OBJECT, 0, 0, LIMIT_USAGE_METADATA, NULL},
};

/*
 * The period bounds go out as RFC 3339 UTC text computed in the same
 * transaction (now() is its start), whatever the session TimeZone.
 */
static const char sql_read[] =
    "SELECT uu.usage_type, uu.used, uu.monthly_limit, uu.remaining, uu.tier, "
    "billing_iso_utc(uu.period_start::timestamp AT TIME ZONE 'UTC'), "
    "billing_iso_utc(uu.period_end::timestamp AT TIME ZONE 'UTC'), "
    "s.id IS NOT NULL, s.status, s.billing_interval, billing_iso_utc(s.trial_end), "
    "billing_iso_utc(s.current_period_end), s.cancel_at_period_end "
    "FROM user_usage($1) WITH ORDINALITY AS uu(usage_type, period_start, period_end, "
    "used, monthly_limit, remaining, tier, ord) "
    "LEFT JOIN LATERAL user_live_subscription($1) AS s ON true "
    "ORDER BY uu.ord";

/* track_usage is atomic on its own: one INSERT ... ON CONFLICT DO UPDATE ... WHERE. */
static const char sql_track[] =
    "SELECT t.allowed, t.used, t.monthly_limit, t.remaining, "
    "billing_iso_utc(usage_period_start(now())::timestamp AT TIME ZONE 'UTC'), "
    "billing_iso_utc(usage_period_end(now())::timestamp AT TIME ZONE 'UTC'), "
    "user_effective_tier($1) "
    "FROM track_usage($1, $2, $3::bigint) AS t";

/*
 * Claims the key: inserted = 1 when this request is the first with it.
 * A concurrent first request with the same key makes the INSERT wait
 * until that transaction ends, so a retry sees its committed answer.
 * The hash is over the canonical jsonb text, so member order and
 * whitespace in metadata do not matter.
 */
static const char sql_claim[] =
    "WITH h AS (SELECT encode(sha256(convert_to(jsonb_build_array($3::text, "
    "$4::bigint, $5::jsonb)::text, 'UTF8')), 'hex') AS hash), "
    "ins AS (INSERT INTO usage_idempotency (user_id, idempotency_key, request_hash) "
    "SELECT $1, $2, hash FROM h ON CONFLICT DO NOTHING RETURNING 1) "
    "SELECT (SELECT count(*) FROM ins), hash FROM h";

/* track_usage counts its refusals, but a keyed one is rolled back with the key. */
static const char sql_refusal[] = "SELECT quota_refusal_record($1, $2)";

static const char sql_stored[] =
    "SELECT request_hash, status, response::text FROM usage_idempotency "
    "WHERE user_id = $1 AND idempotency_key = $2 FOR UPDATE";

/*
 * Stores the first answer and reads it back as jsonb text, which the
 * first answer is then sent from: a replay is byte-for-byte the same
 * (jsonb orders members its own way).
 */
static const char sql_store[] =
    "UPDATE usage_idempotency SET status = $3::integer, response = $4::jsonb "
    "WHERE user_id = $1 AND idempotency_key = $2 RETURNING response::text";

/*
 * The per-user cap: the user's newest $2 keys stay, older ones are
 * forgotten (usage_idempotency_user_created_idx makes this one index
 * range).  Keys of transactions still in progress are not visible here,
 * so they are never removed under a running request.
 */
static const char sql_cap[] =
    "DELETE FROM usage_idempotency WHERE user_id = $1 AND idempotency_key IN ("
    "SELECT idempotency_key FROM usage_idempotency WHERE user_id = $1 "
    "ORDER BY created_at DESC, idempotency_key DESC OFFSET $2::integer)";

/*
 * Whether PostgreSQL's jsonb takes v, which the idempotency hash casts: a
 * number numeric refuses (1E200000) would make a keyed request fail
 * where the same request without a key succeeds.  json-c writes a
 * fraction or exponent back as the client wrote it (integers beyond
 * int64 it clamps, which numeric takes).  Depth is jsonget_parse's limit.
 */
static int
metadata_storable(struct json_object *v)
{
	size_t i, n;

	switch (json_object_get_type(v)) {
	case json_type_double:
		return jsonb_number_storable(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN));
	case json_type_array:
		n = json_object_array_length(v);
		for (i = 0; i < n; i++)
			if (!metadata_storable(json_object_array_get_idx(v, i)))
				return 0;
		return 1;
	case json_type_object: {
		json_object_object_foreach(v, name, member) {
			(void)name;
			if (!metadata_storable(member))
				return 0;
		}
		return 1;
	}
	default:
		return 1;
	}
}

enum outcome
usage_parse_record(const char *body, size_t len, struct usage_record *rec, const char **bad,
		   const char **why)
{
	enum outcome rc;

	memset(rec, 0, sizeof(*rec));
	if ((rc = jsonget_parse(body, len, &rec->root)) != OUT_OK)
		return rc;
	rc = jsonget_validate(rec->root, record_fields,
			      sizeof(record_fields) / sizeof(record_fields[0]), bad, why);
	if (rc != OUT_OK) {
		usage_record_free(rec);
		return rc;
	}
	rec->user_id = jsonget_str(rec->root, "userId");
	rec->usage_type = jsonget_str(rec->root, "usageType");
	if (jsonget_int(rec->root, "amount", &rec->amount) == -1)
		rec->amount = 1;
	/* jsonget_parse refused any \u0000, so no string in metadata is cut short. */
	rec->metadata = jsonget_obj(rec->root, "metadata");
	if (rec->metadata != NULL && !metadata_storable(rec->metadata)) {
		*bad = "metadata";
		*why = "numbers must have at most 64 characters and an exponent within 999";
		usage_record_free(rec);
		return OUT_INVALID_FIELD;
	}
	return OUT_OK;
}

void
usage_record_free(struct usage_record *rec)
{
	if (rec == NULL)
		return;
	json_object_put(rec->root);
	memset(rec, 0, sizeof(*rec));
}

void
usage_answer_free(struct usage_answer *answer)
{
	if (answer == NULL)
		return;
	json_object_put(answer->body);
	answer->body = NULL;
}

/* A string member, or null for SQL NULL. */
static void
add_text(struct json_object *o, const char *key, const char *s)
{
	response_add(o, key, s ? json_object_new_string(s) : NULL);
}

/* A bigint column as a JSON integer, or null for SQL NULL (unlimited). */
static void
add_int(struct json_object *o, const char *key, const char *s)
{
	response_add(o, key, s ? json_object_new_int64(strtoll(s, NULL, 10)) : NULL);
}

static void
add_period(struct json_object *o, const char *start, const char *end)
{
	struct json_object *p = response_object();

	add_text(p, "start", start);
	add_text(p, "end", end);
	response_add(o, "period", p);
}

static int
is_true(const char *s)
{
	return s != NULL && strcmp(s, "t") == 0;
}

enum outcome
usage_read(struct db *db, const char *user_id, struct usage_answer *answer)
{
	struct db_rows *rows = NULL;
	struct json_object *body = NULL, *list, *item, *sub;
	enum db_result r;
	enum outcome rc = OUT_INTERNAL;
	int i, n;

	memset(answer, 0, sizeof(*answer));
	if ((r = DB_QUERY(db, &rows, sql_read, user_id)) != DB_OK) {
		rc = db_outcome(r);
		goto out;
	}
	if ((n = db_rows_count(rows)) == 0) {
		log_msg("user_usage returned no rows");
		goto out;
	}
	/* Columns: 0 type, 1 used, 2 limit, 3 remaining, 4 tier, 5-6 period,
	 * 7 has subscription, 8 status, 9 interval, 10 trial end,
	 * 11 current period end, 12 cancel at period end. */
	body = response_object();
	add_text(body, "userId", user_id);
	add_text(body, "tier", db_rows_get(rows, 0, 4));
	add_text(body, "status",
		 is_true(db_rows_get(rows, 0, 7)) ? db_rows_get(rows, 0, 8) : "none");
	add_period(body, db_rows_get(rows, 0, 5), db_rows_get(rows, 0, 6));
	if (is_true(db_rows_get(rows, 0, 7))) {
		sub = response_object();
		add_text(sub, "interval", db_rows_get(rows, 0, 9));
		add_text(sub, "status", db_rows_get(rows, 0, 8));
		add_text(sub, "trialEnd", db_rows_get(rows, 0, 10));
		add_text(sub, "currentPeriodEnd", db_rows_get(rows, 0, 11));
		response_add(sub, "cancelAtPeriodEnd",
		    json_object_new_boolean(is_true(db_rows_get(rows, 0, 12))));
		response_add(body, "subscription", sub);
	} else
		response_add(body, "subscription", NULL);
	if ((list = json_object_new_array()) == NULL)
		response_fatal("out of memory");
	response_add(body, "usage", list);
	for (i = 0; i < n; i++) {
		item = response_object();
		add_text(item, "usageType", db_rows_get(rows, i, 0));
		add_int(item, "used", db_rows_get(rows, i, 1));
		add_int(item, "limit", db_rows_get(rows, i, 2));
		add_int(item, "remaining", db_rows_get(rows, i, 3));
		if (json_object_array_add(list, item) != 0)
			response_fatal("out of memory");
	}
	answer->outcome = OUT_OK;
	answer->body = body;
	body = NULL;
	rc = OUT_OK;
out:
	json_object_put(body);
	db_rows_free(rows);
	return rc;
}

/* Runs track_usage and shapes the 200 body or the 402 members beside "error". */
static enum db_result
track(struct db *db, const struct usage_record *rec, struct usage_answer *answer)
{
	struct db_rows *rows = NULL;
	struct json_object *body;
	enum db_result r;
	char amount[24];

	snprintf(amount, sizeof(amount), "%lld", rec->amount);
	if ((r = DB_QUERY(db, &rows, sql_track, rec->user_id, rec->usage_type, amount)) != DB_OK)
		return r;
	if (db_rows_count(rows) != 1) {
		log_msg("track_usage returned no row");
		db_rows_free(rows);
		return DB_ERROR;
	}
	body = response_object();
	add_text(body, "userId", rec->user_id);
	add_text(body, "usageType", rec->usage_type);
	response_add(body, "amount", json_object_new_int64(rec->amount));
	add_int(body, "used", db_rows_get(rows, 0, 1));
	add_int(body, "limit", db_rows_get(rows, 0, 2));
	add_int(body, "remaining", db_rows_get(rows, 0, 3));
	add_period(body, db_rows_get(rows, 0, 4), db_rows_get(rows, 0, 5));
	answer->outcome = is_true(db_rows_get(rows, 0, 0)) ? OUT_OK : OUT_QUOTA_EXCEEDED;
	answer->body = body;
	answer->usage_type = rec->usage_type;
	snprintf(answer->tier, sizeof(answer->tier), "%s",
	    db_rows_get(rows, 0, 6) ? db_rows_get(rows, 0, 6) : "");
	db_rows_free(rows);
	return DB_OK;
}

/* Turns a stored (status, response) back into the answer it was. */
static enum db_result
from_stored(const char *status, const char *response, struct usage_answer *answer)
{
	struct json_object *body = NULL;

	if (status == NULL || response == NULL)
		return DB_ERROR; /* never committed without them; see sql_store */
	if (jsonget_parse(response, strlen(response), &body) != OUT_OK) {
		log_msg("stored idempotent response unreadable");
		return DB_ERROR;
	}
	if (strcmp(status, "200") == 0)
		answer->outcome = OUT_OK;
	else if (strcmp(status, "402") == 0)
		answer->outcome = OUT_QUOTA_EXCEEDED;
	else {
		json_object_put(body);
		log_msg("stored idempotent status unexpected");
		return DB_ERROR;
	}
	answer->body = body;
	return DB_OK;
}

/*
 * One attempt at the keyed transaction: claim the key, then either
 * count and store the answer, or read back the first answer.
 */
static enum db_result
track_once_keyed(struct db *db, const struct usage_record *rec, const char *key,
		 const char *max_keys, struct usage_answer *answer)
{
	struct db_rows *claim = NULL, *stored = NULL;
	const char *metadata = NULL, *hash;
	char amount[24], status[8];
	enum db_result r;

	snprintf(amount, sizeof(amount), "%lld", rec->amount);
	if (rec->metadata)
		metadata = json_object_to_json_string_ext(rec->metadata, JSON_C_TO_STRING_PLAIN);
	if ((r = db_begin(db)) != DB_OK)
		goto out;
	if ((r = DB_QUERY(db, &claim, sql_claim, rec->user_id, key, rec->usage_type, amount,
			  metadata)) != DB_OK)
		goto out;
	hash = db_rows_get(claim, 0, 1);
	if (hash == NULL) {
		r = DB_ERROR;
		goto out;
	}
	if (strcmp(db_rows_get(claim, 0, 0), "1") == 0) {
		if ((r = track(db, rec, answer)) != DB_OK)
			goto out;
		if (answer->outcome != OUT_OK) {
			/*
			 * Refused: nothing was counted, so nothing is kept, not even
			 * the key (a user over quota could otherwise grow the table
			 * without bound).  A retry is judged afresh, which is safe:
			 * it cannot count twice what was never counted.
			 */
			db_rollback(db);
			/* The 402 is still answered: count it (quota breaches). */
			if (DB_QUERY(db, NULL, sql_refusal, rec->user_id, rec->usage_type) != DB_OK)
				log_msg("counting the refusal failed");
			goto out;
		}
		if ((r = DB_QUERY(db, NULL, sql_cap, rec->user_id, max_keys)) != DB_OK)
			goto out;
		snprintf(status, sizeof(status), "%d", outcome_status(answer->outcome));
		r = DB_QUERY(db, &stored, sql_store, rec->user_id, key, status,
			     json_object_to_json_string_ext(answer->body, JSON_C_TO_STRING_PLAIN));
		if (r != DB_OK)
			goto out;
		usage_answer_free(answer);
		if ((r = from_stored(status, db_rows_get(stored, 0, 0), answer)) != DB_OK)
			goto out;
	} else {
		if ((r = DB_QUERY(db, &stored, sql_stored, rec->user_id, key)) != DB_OK)
			goto out;
		if (db_rows_count(stored) != 1) {
			/* Pruned between our two statements: try again from the claim. */
			r = DB_SERIALIZATION;
			goto out;
		}
		if (strcmp(db_rows_get(stored, 0, 0), hash) != 0) {
			answer->outcome = OUT_IDEMPOTENCY_CONFLICT;
		} else if ((r = from_stored(db_rows_get(stored, 0, 1), db_rows_get(stored, 0, 2),
					    answer)) != DB_OK)
			goto out;
		else
			answer->replayed = 1;
	}
	r = db_commit(db);
out:
	if (r != DB_OK) {
		db_rollback(db);
		usage_answer_free(answer);
		memset(answer, 0, sizeof(*answer));
	}
	db_rows_free(claim);
	db_rows_free(stored);
	return r;
}

enum outcome
usage_track(struct db *db, const struct usage_record *rec, const char *key,
	    struct usage_answer *answer)
{
	enum db_result r = DB_ERROR;
	enum outcome o;
	char max_keys[24];
	long cap;
	int tries;

	memset(answer, 0, sizeof(*answer));
	if ((o = config_get_long("USAGE_IDEMPOTENCY_MAX_KEYS", LIMIT_USAGE_IDEMPOTENCY_KEYS, 1,
				 LIMIT_USAGE_IDEMPOTENCY_KEYS_MAX, &cap)) != OUT_OK)
		return o;
	snprintf(max_keys, sizeof(max_keys), "%ld", cap);
	for (tries = 0; tries < LIMIT_DB_TRIES; tries++) {
		r = key ? track_once_keyed(db, rec, key, max_keys, answer) : track(db, rec, answer);
		if (!db_retryable(r))
			break;
	}
	if (r != DB_OK) {
		usage_answer_free(answer);
		return db_outcome(r);
	}
	log_note("usage_type", rec->usage_type);
	if (answer->replayed)
		log_note("idempotent", "replayed");
	return OUT_OK;
}

void
usage_maybe_prune(struct db *db)
{
	if (arc4random_uniform(USAGE_PRUNE_ONE_IN) != 0)
		return;
	if (db_exec(db, NULL, "SELECT prune_usage_idempotency()", 0, NULL) != DB_OK)
		log_msg("pruning idempotency keys failed");
}

int
usage_type_valid(const char *s)
{
	size_t i;

	for (i = 0; s != NULL && usage_types[i] != NULL; i++)
		if (strcmp(s, usage_types[i]) == 0)
			return 1;
	return 0;
}
