/*
 * Changing a subscription's plan on Stripe and previewing what it costs
 * (docs.stripe.com/billing/subscriptions/change-price,
 * docs.stripe.com/billing/subscriptions/prorations): the proration
 * behaviour a request may use, the parameters of the update and of
 * POST /v1/invoices/create_preview, and the preview answer built from
 * Stripe's preview invoices.  Everything here but plan_change_proration
 * (settings) is pure, for unit tests.
 */
#ifndef PLAN_CHANGE_H
#define PLAN_CHANGE_H

#include <json-c/json.h>

#include "form.h"
#include "outcome.h"

enum plan_proration {
	PRORATION_CREATE,	  /* create_prorations: the difference goes on the next invoice */
	PRORATION_ALWAYS_INVOICE, /* always_invoice: invoiced and charged at once */
	PRORATION_NONE,		  /* none: the new price from the next period, no difference */
	PRORATION__MAX
};

/* Stripe's name ("create_prorations"); parse: 0 and *p, or -1. */
const char *plan_change_proration_name(enum plan_proration p);
int plan_change_proration_parse(const char *s, enum plan_proration *p);

/*
 * The behaviour for a request: requested (NULL: STRIPE_PRORATION_BEHAVIOR,
 * default create_prorations), which must be listed in
 * STRIPE_PRORATION_CHOICES (default "create_prorations,always_invoice":
 * "none" lets a user upgrade without paying the rest of the period, so an
 * operator has to allow it).  OUT_OK; OUT_INVALID_FIELD with *why (static)
 * for a behaviour not allowed; OUT_MISCONFIGURED for a bad setting.
 */
enum outcome plan_change_proration(const char *requested, enum plan_proration *p, const char **why)
    __attribute__((warn_unused_result));

struct plan_change {
	const char *subscription; /* sub_... */
	const char *item;	  /* si_...: the item whose price changes */
	const char *price;	  /* the new price id */
	enum plan_proration proration;
	long long proration_date; /* unix seconds; 0 = Stripe's now */
};

/*
 * POST /v1/subscriptions/{id}: items[0][id], items[0][price],
 * proration_behavior, proration_date (when set) and
 * payment_behavior=pending_if_incomplete, so that an upgrade whose
 * payment fails leaves the old price in force
 * (docs.stripe.com/billing/subscriptions/pending-updates).  0 or -1.
 */
int plan_change_update_params(struct form *f, const struct plan_change *c)
    __attribute__((warn_unused_result));

/*
 * POST /v1/invoices/create_preview for the change under behaviour
 * (subscription, subscription_details[items], [proration_behavior],
 * [proration_date], which must be set).  0 or -1.
 */
int plan_change_preview_params(struct form *f, const struct plan_change *c,
			       enum plan_proration behaviour) __attribute__((warn_unused_result));

/*
 * Whether Stripe invoices the change at once: a new billing interval
 * restarts the cycle and bills the new period now; always_invoice bills
 * the difference now (nothing during a trial, where nothing is prorated).
 */
int plan_change_invoiced_now(enum plan_proration p, int interval_changes, int trialing);

/*
 * The preview answer: {"proration","prorationDate","currency",
 * "dueNow":{"amount","lines"},"nextInvoice":{"amount","date","lines"}}
 * with lines [{"description","amount","proration"}].
 *   invoiced_now 0: preview is the next invoice (prorations + the next
 *     period); nothing is due now.
 *   invoiced_now 1: preview is the invoice the change creates; the next
 *     invoice holds only the renewal: renewal's non-proration lines,
 *     where renewal is a preview with proration_behavior=none (same
 *     interval), or NULL when the interval changes (then the new
 *     period's lines of preview tell the price, due at their end).
 * OUT_OK and *answer (caller puts), or OUT_STRIPE_ERROR when an invoice
 * lacks amounts or periods.
 */
enum outcome plan_change_preview_answer(struct json_object *preview, struct json_object *renewal,
					int invoiced_now, enum plan_proration p,
					long long proration_date, struct json_object **answer)
    __attribute__((warn_unused_result));

#endif
