#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "limits.h"
#include "log.h"
#include "mem.h"
#include "outbox.h"

static const char *const state_names[OUTBOX__MAX] = {
	[OUTBOX_SENT] = "sent",
	[OUTBOX_RETRY] = "pending",
	[OUTBOX_FAILED] = "failed",
	[OUTBOX_NO_EMAIL] = "no_email",
};

enum db_result
outbox_queue(struct db *db, const char *kind, const char *dedupe_key, const char *event_id,
    const char *user_id, const char *customer_id, const char *subscription_id,
    const char *extras_json)
{
	/*
	 * One statement: the subscription's row as the event left it gives
	 * what the mail needs, so that sending needs no Stripe call.
	 */
	return DB_QUERY(db, NULL,
	    "INSERT INTO notifications (user_id, kind, payload, dedupe_key)"
	    " SELECT coalesce($1, s.user_id, c.user_id), $2,"
	    "  jsonb_strip_nulls(jsonb_build_object("
	    "   'stripe_event_id', $3::text, 'stripe_subscription_id', $4::text,"
	    "   'stripe_customer_id', coalesce($5, s.stripe_customer_id),"
	    "   'plan', s.tier, 'interval', s.billing_interval, 'amount', s.unit_amount,"
	    "   'currency', s.currency, 'trial_end', billing_iso_utc(s.trial_end),"
	    "   'current_period_end', billing_iso_utc(s.current_period_end))) || $6::jsonb,"
	    "  $7"
	    " FROM (SELECT 1) AS one"
	    " LEFT JOIN subscriptions s ON s.stripe_subscription_id = $4"
	    " LEFT JOIN customers c ON c.stripe_customer_id = coalesce($5, s.stripe_customer_id)"
	    " ON CONFLICT (dedupe_key) DO NOTHING",
	    user_id, kind, event_id, subscription_id, customer_id, extras_json, dedupe_key);
}

static char *
dup_or_null(const char *s)
{
	return s ? mem_strdup(s) : NULL;
}

int
outbox_claim(struct db *db, const char *after, long hold_ms, struct outbox_row *row)
{
	struct db_rows *rows = NULL;
	int got = -1;

	memset(row, 0, sizeof(*row));
	if (db_begin(db) != DB_OK) {
		log_msg("outbox: cannot begin a transaction");
		return -1;
	}
	/*
	 * In id order, so that one run visits each row at most once (the
	 * caller passes the last id back) and old rows go first.
	 */
	if (DB_QUERY(db, &rows,
	    "SELECT n.id, n.kind, n.user_id, c.email, n.payload::text, n.attempts,"
	    " (extract(epoch FROM n.created_at) * 1000000)::bigint"
	    " FROM notifications n LEFT JOIN customers c ON c.user_id = n.user_id"
	    " WHERE n.status = 'pending' AND n.next_attempt_at <= now() AND n.id > $1::bigint"
	    " ORDER BY n.id LIMIT 1 FOR UPDATE OF n SKIP LOCKED", after) != DB_OK) {
		log_msg("outbox: claiming failed");
		goto out;
	}
	if (db_rows_count(rows) == 0) {
		got = 0;
		goto out;
	}
	if (db_hold_idle(db, hold_ms) != DB_OK) {
		log_msg("outbox: setting the idle-in-transaction timeout failed");
		goto out;
	}
	row->id = mem_strdup(db_rows_get(rows, 0, 0));
	row->kind = mem_strdup(db_rows_get(rows, 0, 1));
	row->user_id = dup_or_null(db_rows_get(rows, 0, 2));
	row->email = dup_or_null(db_rows_get(rows, 0, 3));
	row->payload = mem_strdup(db_rows_get(rows, 0, 4));
	row->attempts = atoi(db_rows_get(rows, 0, 5));
	row->created_us = strtoll(db_rows_get(rows, 0, 6), NULL, 10);
	got = 1;
out:
	db_rows_free(rows);
	if (got != 1)
		db_rollback(db);
	return got;
}

int
outbox_record(struct db *db, const struct outbox_row *row, const struct outbox_result *res)
{
	char seconds[24], reason[LIMIT_MAIL_REASON + 1];
	const char *count = res->state == OUTBOX_NO_EMAIL ? "0" : "1";
	enum db_result r;

	snprintf(seconds, sizeof(seconds), "%ld", res->retry_seconds);
	if (res->reason)
		snprintf(reason, sizeof(reason), "%s", res->reason);
	r = DB_QUERY(db, NULL,
	    "UPDATE notifications SET status = $2, attempts = attempts + $3::integer,"
	    " next_attempt_at = CASE WHEN $2 = 'pending'"
	    "  THEN now() + make_interval(secs => $4::double precision) ELSE next_attempt_at END,"
	    " sent_at = CASE WHEN $2 = 'sent' THEN now() END,"
	    " last_error = $5, message_id = coalesce($6, message_id),"
	    " recipient = coalesce($7, recipient)"
	    " WHERE id = $1::bigint",
	    row->id, state_names[res->state], count, seconds, res->reason ? reason : NULL,
	    res->message_id, res->recipient);
	if (r == DB_OK)
		r = db_commit(db);
	else
		db_rollback(db);
	if (r != DB_OK) {
		log_msg("outbox: notification %s: recording the result failed", row->id);
		return -1;
	}
	return 0;
}

void
outbox_release(struct db *db)
{
	db_rollback(db);
}

long
outbox_due(struct db *db)
{
	struct db_rows *rows = NULL;
	long n = -1;

	if (db_exec(db, &rows, "SELECT count(*) FROM notifications"
	    " WHERE status = 'pending' AND next_attempt_at <= now()", 0, NULL) == DB_OK)
		n = strtol(db_rows_get(rows, 0, 0), NULL, 10);
	db_rows_free(rows);
	return n;
}

void
outbox_row_free(struct outbox_row *row)
{
	if (row == NULL)
		return;
	free(row->id);
	free(row->kind);
	free(row->user_id);
	free(row->email);
	free(row->payload);
	memset(row, 0, sizeof(*row));
}

long
outbox_backoff(const struct outbox_policy *p, int attempts, double r)
{
	long d = p->base_s;
	int i;

	if (attempts >= p->max_attempts)
		return -1;
	for (i = 1; i < attempts && d < p->max_s; i++)
		d = d > p->max_s / 2 ? p->max_s : d * 2;
	if (d > p->max_s)
		d = p->max_s;
	if (r < 0 || r >= 1)
		r = 0;
	return d / 2 + (long)(r * (double)(d - d / 2));
}
