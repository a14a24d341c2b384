/*
 * billing-sync check: what differs between Stripe and the database,
 * changing nothing.  Every subscription Stripe lists (status=all) is
 * compared with its row in the columns that decide what a user gets:
 * status, tier, billing interval, current period end and
 * cancel_at_period_end (as subscription_columns_of says they would be
 * stored); rows Stripe does not list and subscriptions without a row are
 * reported too.
 */
#ifndef DRIFT_H
#define DRIFT_H

#include "db.h"
#include "sync.h"

/*
 * Writes the report to stdout: with o->json one JSON object
 *   {"drift": bool, "stripe": n, "database": n,
 *    "differs": [{"id", "customer", "fields": {"<column>": {"database": v,
 *                 "stripe": v}}}],
 *    "missing_locally": [{"id", "customer", "status"}],
 *    "missing_in_stripe": [{"id", "customer", "status"}]}
 * (times as RFC 3339 UTC), else one line per subscription and nothing
 * when there is no drift.  Returns SYNC_EXIT_OK (no drift),
 * SYNC_EXIT_ATTENTION (drift) or SYNC_EXIT_ERROR (no report).
 */
int drift_check(struct db *db, const struct sync_options *o);

#endif
