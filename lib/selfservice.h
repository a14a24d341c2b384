/*
 * The rules of /api/subscription: a user reads their subscription and
 * changes, previews, cancels or resumes it (what Laravel Cashier's swap,
 * cancel and resume and Pay's do).  Every action runs in ONE database
 * transaction that holds the webhook's lock on the subscription
 * (subscription_lock) across the Stripe call, so actions and events on
 * one subscription never interleave; the subscription object Stripe
 * answers with is stored through subscription_store_object (the
 * webhook's code and ordering rule) before the commit, and the answer is
 * the row as committed.
 *
 * Live = trialing, active or past_due (the statuses that grant the tier,
 * and that checkout calls already_subscribed).  The row acted on is
 * user_live_subscription(user) (sql/schema.sql).
 *
 *   change   live, not scheduled to cancel, another tier or interval:
 *            GET the subscription (its item id and current state, stored),
 *            then POST /v1/subscriptions/{id} (see plan_change.h);
 *            a payment that fails leaves the old plan: OUT_PAYMENT_FAILED.
 *   preview  as change, but POST /v1/invoices/create_preview (twice when
 *            the change is invoiced at once); nothing changes.
 *   cancel   live; atPeriodEnd (default true): cancel_at_period_end=true,
 *            refused when already scheduled; false: DELETE, with prorate
 *            and invoice_now from STRIPE_CANCEL_NOW_PRORATE and
 *            STRIPE_CANCEL_NOW_INVOICE_NOW (default false, Stripe's).
 *   resume   live and scheduled to cancel: cancel_at_period_end=false.
 */
#ifndef SELFSERVICE_H
#define SELFSERVICE_H

#include <json-c/json.h>

#include "db.h"
#include "limits.h"
#include "outcome.h"
#include "plan.h"
#include "stripe.h"


enum selfservice_action { SS_CHANGE, SS_PREVIEW, SS_CANCEL, SS_RESUME, SS__MAX };

/* A validated POST body.  Strings are borrowed from the parsed body. */
struct selfservice_request {
	const char *user_id;
	enum selfservice_action action;
	enum plan_tier tier;	     /* change, preview */
	enum plan_interval interval; /* change, preview */
	const char *proration;	     /* change, preview: as asked; NULL = the default */
	long long proration_date;    /* change: from a preview; 0 = not given */
	int at_period_end;	     /* cancel: default 1 */
};

/* What the rules look at in the subscriptions row. */
struct selfservice_sub {
	int exists;
	char id[LIMIT_STRIPE_ID_LEN + 1];
	char status[32];
	char tier[16];
	char interval[16];
	int cancel_at_period_end;
	long long period_start; /* unix seconds; 0 unknown */
};

/*
 * Validates the body {"userId","action","tier"?,"interval"?,"proration"?,
 * "prorationDate"?,"atPeriodEnd"?} by the field table and the needs of
 * the action (change and preview need tier and interval).  OUT_OK and
 * *req; OUT_INVALID_FIELD with *field and *why (static).
 */
enum outcome selfservice_parse(struct json_object *body, struct selfservice_request *req,
			       const char **field, const char **why)
    __attribute__((warn_unused_result));

/* What the user may do next with s: bits (1 << SS_CHANGE), (1 << SS_CANCEL), (1 << SS_RESUME). */
unsigned selfservice_actions(const struct selfservice_sub *s);

/*
 * Whether req may be done to s: OUT_OK, OUT_NO_SUBSCRIPTION (none, or not
 * live), OUT_NOT_RESUMABLE, OUT_CANCEL_PENDING or OUT_NO_CHANGE.
 */
enum outcome selfservice_refusal(const struct selfservice_request *req,
				 const struct selfservice_sub *s)
    __attribute__((warn_unused_result));

/*
 * NULL when a change's prorationDate (date) can be used at time now in the
 * period starting at period_start (0: unknown), else a static reason.
 */
const char *selfservice_proration_date_problem(long long date, long long now,
					       long long period_start);

/*
 * The GET answer: the user's subscription as stored (user_live_subscription)
 * with "actions".  OUT_OK with *body (caller puts), or a database outcome.
 */
enum outcome selfservice_read(struct db *db, const char *user_id, struct json_object **body)
    __attribute__((warn_unused_result));

/*
 * Performs req in one transaction (see above).  idempotency_key is sent
 * on the POST that changes the subscription (see
 * stripe_client_idempotency_key).  OUT_OK with *body: the new state (as
 * selfservice_read), or for preview the preview answer
 * (plan_change_preview_answer); OUT_PAYMENT_FAILED with *body the state
 * (old plan in force); otherwise NULL *body and the refusal, field
 * problem (OUT_INVALID_FIELD with *why), stripe, settings or database
 * outcome, with nothing committed.
 */
enum outcome selfservice_act(struct db *db, const struct selfservice_request *req,
			     const char *idempotency_key, struct json_object **body,
			     const char **why) __attribute__((warn_unused_result));

#endif
