/*
 * billing-sync's work: pulling the truth from the Stripe API when
 * webhooks were lost (README, "billing-sync").
 *
 * subscriptions  GET /v1/subscriptions?status=all (canceled and
 *                incomplete_expired are listed only with status=all),
 *                100 a page, starting_after the last one handled; each
 *                is stored by subscription_store_listed (refetch mode's
 *                code and rule) in its own transaction, which also moves
 *                the run's cursor and records the change in sync_changes.
 *                Rows Stripe does not list are reported, never deleted.
 * events         GET /v1/events with types[] = subscription_event_types,
 *                oldest first: from the newest event before --since (or,
 *                when there is none, the oldest one after it) onwards with
 *                ending_before; each goes through subscription_apply_event
 *                as if the webhook had delivered it (source "sync"), so
 *                one already recorded is a duplicate.
 * check          lists every subscription and compares status, tier,
 *                interval, current period end and cancel_at_period_end
 *                with the database, both ways; changes nothing.
 *
 * Runs of subscriptions and events are rows of sync_runs (see the schema):
 * one open run per command, continued from its cursor by the next process
 * when it was killed or stopped by an outage.  Stripe calls go through the
 * stripe module with a patient policy: SYNC_MAX_RPS requests a second at
 * most, 429 and 5xx retried with backoff, honouring Retry-After.
 */
#ifndef SYNC_H
#define SYNC_H

#include <json-c/json.h>

#include "db.h"
#include "outcome.h"

/* Exit statuses (cron acts on them). */
enum sync_exit {
	SYNC_EXIT_OK = 0,	/* done; check: no drift */
	SYNC_EXIT_ATTENTION = 1,	/* done, but something needs an operator; check: drift */
	SYNC_EXIT_ERROR = 2,	/* could not run or finish (a run keeps its place) */
};

struct sync_options {
	const char *customer;	/* subscriptions: only this customer's (NULL: all) */
	long long since;	/* created at or after (unix seconds); -1: no bound */
	int json;		/* check: the report as JSON on stdout */
	int progress;		/* progress lines on stderr (it is a terminal) */
};


/*
 * Parses a --since value relative to now: a duration "<n>m", "<n>h" or
 * "<n>d" ago, or a UTC date "YYYY-MM-DD" or time "YYYY-MM-DDTHH:MM:SSZ".
 * 0 and *out (unix seconds), or -1 for anything else.
 */
int sync_parse_since(const char *arg, long long now, long long *out)
    __attribute__((warn_unused_result));

/*
 * Sets the Stripe call policy for the rest of the process from
 * SYNC_MAX_RPS (default 10, 1..100).  OUT_MISCONFIGURED when it is not a
 * whole number in range.
 */
enum outcome sync_setup(void) __attribute__((warn_unused_result));

/*
 * One page (100) of every subscription (status=all), of customer (NULL:
 * all) created at or after since (-1: any time), after the subscription
 * id after (NULL: the first page).  *listed_at: when it was asked for.
 * As stripe_list.
 */
enum outcome sync_subscriptions_page(const char *customer, long long since, const char *after,
    struct json_object **page, struct json_object **data, int *has_more, long long *listed_at)
    __attribute__((warn_unused_result));

/* The commands; each returns an enum sync_exit and logs its summary line (check: drift.h). */
int sync_subscriptions(struct db *db, const struct sync_options *o);
int sync_events(struct db *db, const struct sync_options *o);

#endif
