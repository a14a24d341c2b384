/*
 * Lifecycle notifications: their kinds, which of them are queued
 * (NOTIFY_KINDS), and what the webhook stores for each in the
 * notifications outbox, in the event's own transaction, so that sending
 * needs no Stripe call.  The SQL is outbox.c's, the mail compose.c's,
 * the sending billing-mailer's.
 *
 *   kind                     queued for                            from the event's object
 *   trial_will_end           customer.subscription.trial_will_end  trial_end
 *   payment_failed           invoice.payment_failed                amount (amount_due), currency,
 *                                                                  hosted_invoice_url, invoice_number,
 *                                                                  attempt_count, next_payment_attempt
 *   payment_action_required  invoice.payment_action_required       the same (3-D Secure and the like)
 *   subscription_canceled    customer.subscription.deleted         ended_at, cancellation_reason
 *   welcome                  checkout.session.completed            -
 *
 * Every payload also carries stripe_event_id, stripe_subscription_id,
 * stripe_customer_id and, from the subscription's row as the event left
 * it, plan (tier), interval, amount (the price), currency, trial_end and
 * current_period_end; the event's own values win.  Times are RFC 3339
 * UTC text, amounts integers in minor units.  A value Stripe did not
 * send, or sent in a shape we do not trust (a URL that is not https), is
 * left out: the mailer then refuses to render a template that needs it
 * instead of sending a blank.
 *
 * One row per event and kind: the dedupe key is "<event id>:<kind>", so a
 * redelivered event queues nothing new.
 */
#ifndef NOTIFY_H
#define NOTIFY_H

#include <json-c/json.h>

#include "db.h"
#include "outcome.h"

enum notify_kind {
	NOTIFY_TRIAL_WILL_END,
	NOTIFY_PAYMENT_FAILED,
	NOTIFY_PAYMENT_ACTION_REQUIRED,
	NOTIFY_SUBSCRIPTION_CANCELED,
	NOTIFY_WELCOME,
	NOTIFY__MAX
};

/* "trial_will_end" ...; NULL out of range. */
const char *notify_kind_name(enum notify_kind k);

/* 0 and *k for a kind's name, -1 otherwise. */
int notify_kind_parse(const char *s, enum notify_kind *k);

/*
 * The kinds NOTIFY_KINDS lets the webhook queue, as bits (1u << kind):
 * a comma-separated list of kinds, "all" or "none"; unset means all but
 * welcome.  OUT_OK, or OUT_MISCONFIGURED (logged, naming the setting)
 * for anything else.
 */
enum outcome notify_kinds(unsigned *mask) __attribute__((warn_unused_result));

/* What an event queues besides the names above. */
struct notify_event {
	const char *id;			/* evt_... */
	long long created;		/* the event's created */
	struct json_object *object;	/* data.object */
	const char *user_id;		/* the user when known, else NULL */
	const char *customer_id;	/* cus_... or NULL */
	const char *subscription_id;	/* sub_... or NULL */
};

/*
 * Queues kind for ev in the caller's transaction, unless NOTIFY_KINDS
 * leaves kind out or the row exists already.  A user_id NULL here is
 * looked up through the subscription, then the customer.  A
 * subscription_canceled for a subscription that never started
 * (incomplete_expired) queues nothing: there is nothing to tell.
 * DB_OK or the database failure.
 */
enum db_result notify_queue(struct db *db, enum notify_kind kind, const struct notify_event *ev)
    __attribute__((warn_unused_result));

#endif
