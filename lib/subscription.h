/*
 * Applying Stripe events to the database (docs.stripe.com/webhooks,
 * docs.stripe.com/billing/subscriptions/webhooks).  Stripe delivers
 * at least once, in no guaranteed order, and retries non-2xx answers,
 * so every event is applied in ONE transaction that starts with its
 * billing_events row:
 *
 *   INSERT INTO billing_events ... ON CONFLICT (stripe_event_id) DO NOTHING
 *
 * No row back = already processed: nothing else is done (200
 * {"received":true,"duplicate":true}).  A concurrent delivery of the
 * same event waits on the unique index until the first commits (then
 * it is a duplicate) or rolls back (then it proceeds).  Work on one
 * subscription is serialised by pg_advisory_xact_lock(hashtext(<sub id>)).
 *
 * Sync modes (STRIPE_SYNC_MODE; default refetch when STRIPE_SECRET_KEY
 * is set, else event):
 *
 * refetch  The event is a trigger (dj-stripe, Pay): under the lock,
 *          GET /v1/subscriptions/<id> and store that object, whatever
 *          the event order.  Stripe unreachable (or refusing) → the
 *          whole transaction, billing_events row included, is rolled
 *          back and the endpoint answers 503/502 so Stripe redelivers;
 *          so is an answer that is not this subscription (object, id,
 *          or a customer other than the event's or the row's: 502).
 *          404, or a live status for a subscription the event deletes
 *          or the row holds ended (an answer read before the end) →
 *          the event's own object, under the event-mode rule.
 *
 * event    The event's object is applied under the ordering rule:
 *          - no row yet: applied;
 *          - the row is final (canceled, incomplete_expired) and the
 *            object is not: never applied (no resurrection, whatever
 *            its created);
 *          - a customer.subscription.deleted is final: always applied;
 *          - created > last_event_created: applied;
 *          - created == last_event_created (same second): a
 *            customer.subscription.updated whose
 *            data.previous_attributes.status is the stored status is
 *            the next step after it: applied (past_due -> active when a
 *            card is fixed); one that led from another status to the
 *            stored one is that step or an earlier one: ignored; one
 *            whose previous_attributes do not name the status did not
 *            change it, so when its status differs from the stored one
 *            the stored one is later: ignored;
 *            otherwise applied only if the status does not go backwards
 *            in the lifecycle rank
 *              incomplete 0 < trialing 1 < active 2
 *              < past_due = unpaid = paused 3
 *              < canceled = incomplete_expired 4
 *            (an equal rank applies: later delivery wins on a tie);
 *          - created < last_event_created: ignored (recorded only).
 *          last_event_created only moves forwards.
 *
 * Events:
 *   customer.subscription.created/updated/deleted/trial_will_end
 *       upsert the subscription (deleted: status canceled, canceled_at,
 *       ended_at, cancellation_details.reason).
 *   checkout.session.completed (mode subscription)
 *       marks our checkout_sessions row complete; resolves the owner
 *       (below) from client_reference_id (else metadata.userId) and the
 *       customer, gives the owner the subscription rows of that customer
 *       and the subscription's row if it has no user yet, and creates the
 *       subscription row if absent: status incomplete, tier/interval
 *       from the session metadata, last_event_created NULL so that any
 *       subscription event overrides it (refetch mode stores the real
 *       subscription instead).
 *   checkout.session.expired
 *       marks our checkout_sessions row expired.
 *   invoice.paid / invoice.payment_failed / invoice.payment_action_required
 *       billing event with the amounts; payment_failed moves an active
 *       or trialing subscription to past_due (ordering rule as above;
 *       an incomplete first payment stays incomplete: past_due would
 *       grant the paid tier); refetch mode refetches the subscription.
 *   customer.updated
 *       only customers.email (below).
 *   anything else: recorded only, {"received":true,"ignored":true}.
 *
 * Mail, in the same transaction (notify.h): trial_will_end,
 * customer.subscription.deleted, invoice.payment_failed,
 * invoice.payment_action_required and checkout.session.completed queue
 * one notifications row each (kinds trial_will_end,
 * subscription_canceled, payment_failed, payment_action_required,
 * welcome) as NOTIFY_KINDS allows.  customers.email follows
 * checkout.session.completed's customer_details.email and
 * customer.updated's email, never an older event's.
 *
 * Tier/interval: the configured price (STRIPE_PRICE_*), else
 * metadata.tier / metadata.interval, else (interval) the price's
 * recurring.interval, else the existing row's; an unknown tier on a new
 * row is stored as 'free' with a warning (never grant a paid tier we
 * cannot identify).  Periods: items.data[0].current_period_* (API
 * 2025-03-31 and later), else the subscription's own (older APIs).
 * Owner: customers is the authority on who owns a Stripe customer.  The
 * user an event names (metadata.userId, client_reference_id; 1..128
 * bytes of clean UTF-8) is a claim: a subscription, invoice or session
 * belongs to its customer's user when the customer is linked; a claim is
 * linked to the customer only while neither is linked; a claim that
 * customers contradicts changes nothing and is recorded in
 * ownership_conflicts (and logged).  A user who ends up with a second
 * live subscription is recorded there too (second_subscription).
 * billing_events.user_id is the owner so resolved (NULL until known).
 *
 * billing-sync feeds events it lists from GET /v1/events through the same
 * subscription_apply_event (source "sync"), and stores the subscriptions
 * it lists with subscription_store_listed: refetch mode's code and rule.
 */
#ifndef SUBSCRIPTION_H
#define SUBSCRIPTION_H

#include <stddef.h>

#include <json-c/json.h>

#include "db.h"
#include "jsonb.h"
#include "outcome.h"

/* A parsed, verified event: views into root, which the event owns. */
struct subscription_event {
	struct json_object *root;
	const char *id;		/* evt_... */
	const char *type;
	long long created;
	struct json_object *object;	/* data.object */
	struct jsonb_fit fit;	/* the body as stored: what jsonb cannot hold left out */
	const char *raw;	/* fit.text: billing_events.payload, and what root was parsed from */
	size_t raw_len;
	const char *source;	/* who delivered it, billing_events.source: NULL = the
				   webhook, "sync" = billing-sync from GET /v1/events */
};

/* The event types subscription_apply_event acts on, NULL-terminated (others are recorded only). */
extern const char *const subscription_event_types[];

/*
 * Statuses: live ones grant the subscription's tier (trialing, active,
 * past_due: effective_tier in the schema); final ones Stripe never leaves
 * (canceled, incomplete_expired).  NULL is neither.
 */
int subscription_status_live(const char *status);
int subscription_status_final(const char *status);

/*
 * Parses the verified body: a JSON object with string id (1..255
 * bytes, clean), string type, integer created and object data.object.
 * The body is first made storable (jsonb.h): strings holding \u0000 or a
 * lone surrogate and numbers beyond a double become null, so they are
 * never read (a user id is never cut short at a NUL) and the payload
 * always fits jsonb; the paths left out are logged and end up in
 * billing_events.left_out.  OUT_OK, or OUT_INVALID_PAYLOAD (body not
 * JSON or not an event).  raw is copied.
 */
enum outcome subscription_event_parse(const char *raw, size_t len,
    struct subscription_event *ev) __attribute__((warn_unused_result));

/* Releases what subscription_event_parse allocated; safe on a zeroed ev. */
void subscription_event_free(struct subscription_event *ev);

/*
 * Applies ev in one transaction (retried on serialization failure or
 * deadlock).  OUT_OK with *reply (caller puts it): {"received":true}
 * plus "duplicate":true or "ignored":true.  A value beyond its column's
 * range (amounts: bigint; attempt_count: integer; times: 1970..9999) is
 * left out, logged and listed in billing_events.left_out.  If the
 * database still refuses the event's data (SQLSTATE class 22 or 23), the
 * event is recorded without being applied (processed_at NULL, logged)
 * and answered {"received":true,"ignored":true}: a signed event Stripe
 * would redeliver in vain is never refused.  Otherwise nothing was
 * committed: OUT_UNAVAILABLE (database or Stripe down), OUT_STRIPE_ERROR,
 * OUT_MISCONFIGURED (bad STRIPE_SYNC_MODE) or OUT_INTERNAL.
 */
enum outcome subscription_apply_event(struct db *db, const struct subscription_event *ev,
    struct json_object **reply) __attribute__((warn_unused_result));

/*
 * The lock the webhook takes on one subscription, until the caller's
 * transaction ends: take it before reading the row that decides what to
 * ask Stripe, so that events and other calls for that subscription wait.
 * Storing (below) a subscription of a customer linked to no user takes
 * that customer's lock too, which an event holding another subscription's
 * lock may be waiting for: take every subscription's lock a transaction
 * needs before it stores one of such a customer.  OUT_OK, or the database
 * outcome.
 */
enum outcome subscription_lock(struct db *db, const char *stripe_subscription_id)
    __attribute__((warn_unused_result));

/*
 * Stores a subscription object that the Stripe API answered with (an
 * update, a cancellation, a retrieval) in the caller's transaction, by the
 * same code as an event and under the same ordering rule: the caller holds
 * subscription_lock across the call, so the answer is Stripe's current
 * state and is applied as refetch mode applies a fetched subscription
 * (whatever the order); `seen` (unix seconds at which the answer arrived)
 * becomes last_event_created, so in event mode an event created before the
 * call cannot undo it later.  source goes into last_event_id
 * ("api:change"); user_id is the user the caller acts for.  OUT_OK,
 * OUT_STRIPE_ERROR for an object without a valid id or status, or the
 * database outcome.  The caller commits.
 */
enum outcome subscription_store_object(struct db *db, struct json_object *sub, long long seen,
    const char *source, const char *user_id) __attribute__((warn_unused_result));

/* What subscription_store_listed did. */
struct subscription_stored {
	int created;		/* the row is new */
	int refetched;		/* stored from GET /v1/subscriptions/<id> (see there) */
	int gone;		/* ...which answered 404: the row was left as it was */
	int skipped;		/* not storable (no valid id, unknown status): logged */
	int linked;		/* customers got a link for its customer */
	int unlinked;		/* its customer is linked to no user */
	struct json_object *changes;	/* {"column": [before, after], ...}, NULL: none */
};

/*
 * Stores sub, a subscription object from a list taken at listed_at (unix
 * seconds, our clock), in the caller's transaction, by refetch mode's
 * code and rule: under the subscription's lock, Stripe's state is stored
 * whatever order things came in (as subscription_store_object, but the
 * lock cannot be held across a list).  So when the row's last event is
 * newer than the listing (a webhook got there after the list was read),
 * the listing is stale: the subscription is fetched again under the lock
 * and that is stored.  The owner is resolved as for an event (above):
 * the subscription's metadata.userId, else claimed_user (its customer's
 * metadata.userId; NULL: none), is a claim.  source goes into
 * last_event_id and ownership_conflicts ("sync:<run>:<subscription>").
 * OUT_OK with *out (release it with subscription_stored_free); otherwise
 * the caller rolls back: OUT_UNAVAILABLE, OUT_STRIPE_ERROR (the
 * refetch), OUT_INTERNAL.
 */
enum outcome subscription_store_listed(struct db *db, struct json_object *sub,
    long long listed_at, const char *source, const char *claimed_user,
    struct subscription_stored *out)
    __attribute__((warn_unused_result));

/* Releases out->changes; safe on a zeroed out. */
void subscription_stored_free(struct subscription_stored *out);

/* The columns billing-sync check compares, as they would be stored. */
struct subscription_columns {
	const char *status;	/* NULL: not a status we know */
	const char *tier;	/* never NULL */
	const char *interval;	/* NULL: unknown */
	long long period_end;	/* current_period_end, -1: none */
	int cancel_at_period_end;
};

/*
 * The values storing sub would give those columns (views into sub, the
 * row's values or static strings).  row_tier/row_interval: the existing
 * row's, which an unknown price keeps (NULL: no row).
 */
void subscription_columns_of(struct json_object *sub, const char *row_tier,
    const char *row_interval, struct subscription_columns *c);

/* OUT_OK and *user (caller frees; NULL when unlinked): the user customers links to customer. */
enum outcome subscription_customer_user(struct db *db, const char *customer, char **user)
    __attribute__((warn_unused_result));

#endif
