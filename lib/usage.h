/*
 * Usage: reading a user's monthly usage and recording usage against the
 * quota of the user's effective tier (GET|POST /api/usage).  The rules
 * live in sql/schema.sql (user_usage, track_usage, plan_quotas); this
 * module validates input, calls them and shapes the JSON, and keeps the
 * Idempotency-Key store (usage_idempotency).
 *
 * The period is the current UTC calendar month; times go out as RFC 3339
 * UTC ("2026-11-01T00:00:00Z"); a null limit/remaining means unlimited.
 */
#ifndef USAGE_H
#define USAGE_H

#include <stddef.h>

#include <json-c/json.h>

#include "db.h"
#include "outcome.h"

/* One POST in this many prunes idempotency keys older than 24 hours. */
#define USAGE_PRUNE_ONE_IN 100

/* A validated POST body.  Strings and metadata are borrowed from root. */
struct usage_record {
	struct json_object *root; /* owned: the parsed body */
	const char *user_id;
	const char *usage_type;
	long long amount;	      /* 1..LIMIT_USAGE_AMOUNT, default 1 */
	struct json_object *metadata; /* NULL when absent */
};

/*
 * What a read or a record answers: outcome OUT_OK with the success body,
 * or another outcome with the members that go beside "error" (may be
 * NULL); the error's message is the outcome's own.
 */
struct usage_answer {
	enum outcome outcome;
	struct json_object *body; /* owned */
	int replayed; /* 1: the stored first answer to this Idempotency-Key */
	/* For the metrics of a record counted or refused now (not replayed): */
	char tier[16];		/* the user's effective tier, "" if unknown */
	const char *usage_type;	/* borrowed from the record */
};


/*
 * Parses and validates a POST body against the field table (userId,
 * usageType, amount, metadata).  OUT_OK and *rec filled (free with
 * usage_record_free); OUT_INVALID_JSON; or OUT_INVALID_FIELD with *bad
 * naming the field and *why a static sentence (metadata holding a number
 * jsonb cannot store, jsonb.h's rule, is one).
 */
enum outcome usage_parse_record(const char *body, size_t len, struct usage_record *rec,
				const char **bad, const char **why)
    __attribute__((warn_unused_result));

void usage_record_free(struct usage_record *rec);


/*
 * The GET answer for user_id: tier, status, period, subscription (or
 * null) and one entry per usage type in a fixed order.  OUT_OK with
 * answer->body, or a database outcome (OUT_UNAVAILABLE / OUT_INTERNAL).
 */
enum outcome usage_read(struct db *db, const char *user_id, struct usage_answer *answer)
    __attribute__((warn_unused_result));

/*
 * Records rec atomically (track_usage): answer OUT_OK with the new
 * totals, or OUT_QUOTA_EXCEEDED with usageType/used/limit and nothing
 * changed.  With an idempotency key (NULL = none) a 200 is stored in the
 * same transaction and a retry of the same request gets it back without
 * counting again; the same key with a different request is
 * OUT_IDEMPOTENCY_CONFLICT.  A 402 counted nothing and is not stored (a
 * retry is judged afresh), so refusals cannot grow the store.  At most
 * USAGE_IDEMPOTENCY_MAX_KEYS keys are kept per user (default
 * LIMIT_USAGE_IDEMPOTENCY_KEYS): a new one makes the user's oldest go.
 * Forgetting the oldest rather than refusing new keys keeps a busy
 * client working, and only the user's own keys can be pushed out; a
 * retry of a forgotten key counts again.  Returns OUT_OK when *answer is
 * to be sent, OUT_MISCONFIGURED for a bad setting, or the database
 * outcome when nothing could be done (nothing changed).
 */
enum outcome usage_track(struct db *db, const struct usage_record *rec, const char *key,
			 struct usage_answer *answer) __attribute__((warn_unused_result));

/*
 * Deletes idempotency keys older than 24 hours on one call in
 * USAGE_PRUNE_ONE_IN (best effort, outside any transaction; failures
 * are logged only).
 */
void usage_maybe_prune(struct db *db);

/* Whether s is one of the five usage types (billing_usage_types()). */
int usage_type_valid(const char *s);

/* Frees the body; NULL is fine. */
void usage_answer_free(struct usage_answer *answer);

#endif
