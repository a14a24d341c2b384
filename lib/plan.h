/*
 * Plans: tier and billing-interval names, the Stripe price id of each
 * (tier, interval) from the STRIPE_PRICE_<TIER>_<INTERVAL> settings,
 * and trial days per tier.  Nothing here knows a particular app: the
 * tiers are the schema's, the prices and trials are settings.
 */
#ifndef PLAN_H
#define PLAN_H

#include "outcome.h"

enum plan_tier {
	TIER_FREE,
	TIER_BASIC,
	TIER_PRO,
	TIER_ENTERPRISE,
	TIER__MAX
};

enum plan_interval {
	INTERVAL_MONTHLY,
	INTERVAL_YEARLY,
	INTERVAL__MAX
};

/* "free", "basic", "pro", "enterprise". */
const char *plan_tier_name(enum plan_tier t);
/* 0 and *t for a tier name, -1 otherwise. */
int plan_tier_parse(const char *s, enum plan_tier *t);

/* "monthly", "yearly". */
const char *plan_interval_name(enum plan_interval i);
/* Accepts ours ("monthly", "yearly") and Stripe's ("month", "year"). */
int plan_interval_parse(const char *s, enum plan_interval *i);

/* The configured price id for a paid tier, or NULL (free, or the setting is unset). */
const char *plan_price_id(enum plan_tier t, enum plan_interval i);

/* Finds the configured (tier, interval) whose price id is price_id: 0, or -1 if none. */
int plan_from_price(const char *price_id, enum plan_tier *t, enum plan_interval *i);

/*
 * Trial days for a tier: STRIPE_TRIAL_DAYS_<TIER>, default 14 for basic,
 * 30 for pro, 0 otherwise (0 = no trial).  OUT_MISCONFIGURED if invalid.
 */
enum outcome plan_trial_days(enum plan_tier t, long *days) __attribute__((warn_unused_result));

#endif
