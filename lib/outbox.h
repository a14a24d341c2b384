/*
 * The notifications outbox: the only SQL that touches the notifications
 * table.  The webhook queues rows in its event's transaction
 * (outbox_queue, through notify.c); billing-mailer claims, sends and
 * records them.
 *
 * A row is pending (due once next_attempt_at has passed), sent, failed
 * (last_error says why) or no_email (its user has no address in
 * customers.email).  Only pending rows are ever claimed; nothing deletes
 * rows, so nothing is lost: an operator re-queues a failed row with
 *   UPDATE notifications SET status = 'pending', attempts = 0,
 *     next_attempt_at = now() WHERE id = ...;
 *
 * Claiming (RFC-less, PostgreSQL's FOR UPDATE SKIP LOCKED): each row is
 * claimed in its own transaction, which holds the row lock while the
 * mail is sent and ends with the COMMIT of the result.  A second
 * billing-mailer running at the same time skips locked rows, so two runs
 * never send the same row; a run that dies rolls back and its row is
 * simply due again.  The one window for a duplicate is between the SMTP
 * server's "250" and that COMMIT (see README, "Notifications").
 */
#ifndef OUTBOX_H
#define OUTBOX_H

#include "db.h"

/*
 * Queues a notification in the caller's transaction: kind, the dedupe
 * key (a second row with the same key is silently not added), the
 * Stripe event id, the user (NULL: looked up through the subscription,
 * then the customer), customer and subscription ids (either may be NULL)
 * and extras, a JSON object text merged over what the subscription's row
 * gives (plan, interval, amount, currency, trial_end, current_period_end).
 */
enum db_result outbox_queue(struct db *db, const char *kind, const char *dedupe_key,
    const char *event_id, const char *user_id, const char *customer_id,
    const char *subscription_id, const char *extras_json) __attribute__((warn_unused_result));

/* A claimed row; every string is owned by the row. */
struct outbox_row {
	char *id;		/* bigint as text */
	char *kind;
	char *user_id;		/* NULL when the user is still unknown */
	char *email;		/* customers.email now; NULL when there is none */
	char *payload;		/* JSON object text */
	int attempts;		/* attempts before this one */
	long long created_us;	/* created_at in microseconds since the epoch */
};

/*
 * Opens a transaction and locks the first due pending row with an id
 * above after ("0" to start), skipping rows other runs hold.  1 with *row
 * (the transaction stays open until outbox_record or outbox_release);
 * 0 when no row is due; -1 on a database failure (logged).  In both of
 * those cases no transaction is left open.  hold_ms (0: no change) is how
 * long the caller may leave the transaction idle while it sends: the
 * idle-in-transaction timeout of this transaction is raised to it when
 * shorter, or the server would end the session while the mail goes out
 * and the row, sent, would stay pending and be sent again by every run.
 */
int outbox_claim(struct db *db, const char *after, long hold_ms, struct outbox_row *row)
    __attribute__((warn_unused_result));

enum outbox_state {
	OUTBOX_SENT,
	OUTBOX_RETRY,		/* stays pending, due after retry_seconds */
	OUTBOX_FAILED,
	OUTBOX_NO_EMAIL,
	OUTBOX__MAX
};

struct outbox_result {
	enum outbox_state state;
	long retry_seconds;	/* OUTBOX_RETRY */
	const char *reason;	/* last_error (NULL for sent), at most LIMIT_MAIL_REASON bytes kept */
	const char *message_id;	/* recorded when not NULL */
	const char *recipient;	/* recorded when not NULL */
};

/*
 * Records the result for the claimed row (counting the attempt unless
 * no_email) and commits.  0, or -1 when the database failed: then the
 * row is pending as before and will be sent again.
 */
int outbox_record(struct db *db, const struct outbox_row *row, const struct outbox_result *res)
    __attribute__((warn_unused_result));

/* Ends the claim without recording anything (--dry-run). */
void outbox_release(struct db *db);

/* Pending rows due now, or -1 on a database failure. */
long outbox_due(struct db *db);

void outbox_row_free(struct outbox_row *row);

/* Retry policy: at most max_attempts attempts, waits from base_s doubling up to max_s. */
struct outbox_policy {
	int max_attempts;
	long base_s;
	long max_s;
};

/*
 * Seconds to wait after the attempts-th failed attempt (1 for the first):
 * d = min(max_s, base_s * 2^(attempts-1)), then d/2 + r * d/2 with r in
 * [0, 1) ("equal jitter", so that rows failed together spread out but
 * every wait is at least half the nominal one).  -1 when attempts has
 * reached max_attempts: give up.
 */
long outbox_backoff(const struct outbox_policy *p, int attempts, double r);

#endif
