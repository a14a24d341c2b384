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
 *          back and the endpoint answers 503/502 so Stripe redelivers.
 *          404 → the event's own object, under the event-mode rule.
 *
 * event    The event's object is applied under the ordering rule:
 *          - no row yet: applied;
 *          - the row is final (canceled, incomplete_expired) and the
 *            object is not: never applied (no resurrection, whatever
 *            its created);
 *          - a customer.subscription.deleted is final: always applied;
 *          - created > last_event_created: applied;
 *          - created == last_event_created (same second): applied only
 *            if the status does not go backwards in the lifecycle rank
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
 *       ended_at, cancellation_details.reason); trial_will_end also
 *       queues a notifications row (kind trial_will_end, deduplicated).
 *   checkout.session.completed (mode subscription)
 *       links client_reference_id (else metadata.userId) and the
 *       customer in customers, links existing subscription rows of that
 *       customer/subscription that have no user yet, and creates the
 *       subscription row if absent: status incomplete, tier/interval
 *       from the session metadata, last_event_created NULL so that any
 *       subscription event overrides it (refetch mode stores the real
 *       subscription instead).
 *   invoice.paid / invoice.payment_failed
 *       billing event with the amounts; payment_failed moves an active
 *       or trialing subscription to past_due (ordering rule as above;
 *       an incomplete first payment stays incomplete: past_due would
 *       grant the paid tier); refetch mode refetches the subscription.
 *   anything else: recorded only, {"received":true,"ignored":true}.
 *
 * Tier/interval: the configured price (STRIPE_PRICE_*), else
 * metadata.tier / metadata.interval, else (interval) the price's
 * recurring.interval, else the existing row's; an unknown tier on a new
 * row is stored as 'free' with a warning (never grant a paid tier we
 * cannot identify).  Periods: items.data[0].current_period_* (API
 * 2025-03-31 and later), else the subscription's own (older APIs).
 * User: metadata.userId (1..128 bytes, clean UTF-8), else customers by
 * stripe_customer_id, else NULL until checkout.session.completed links it.
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
#include "outcome.h"

/* A parsed, verified event: views into root, which the event owns. */
struct subscription_event {
	struct json_object *root;
	const char *id;		/* evt_... */
	const char *type;
	long long created;
	struct json_object *object;	/* data.object */
	const char *raw;	/* the verified body, stored as billing_events.payload */
	size_t raw_len;
	const char *source;	/* who delivered it, billing_events.source: NULL = the
				   webhook, "sync" = billing-sync from GET /v1/events */
};

/* The event types subscription_apply_event acts on, NULL-terminated (others are recorded only). */
extern const char *const subscription_event_types[];

/*
 * Parses the verified body: a JSON object with string id (1..255
 * bytes, clean), string type, integer created and object data.object.
 * OUT_OK, or OUT_INVALID_PAYLOAD (body not JSON or not an event).
 * raw is borrowed and must outlive ev.
 */
enum outcome subscription_event_parse(const char *raw, size_t len,
    struct subscription_event *ev) __attribute__((warn_unused_result));

/* Releases what subscription_event_parse allocated; safe on a zeroed ev. */
void subscription_event_free(struct subscription_event *ev);

/*
 * Applies ev in one transaction (retried on serialization failure or
 * deadlock).  OUT_OK with *reply (caller puts it): {"received":true}
 * plus "duplicate":true or "ignored":true.  Otherwise nothing was
 * committed: OUT_UNAVAILABLE (database or Stripe down), OUT_STRIPE_ERROR,
 * OUT_MISCONFIGURED (bad STRIPE_SYNC_MODE) or OUT_INTERNAL.
 */
enum outcome subscription_apply_event(struct db *db, const struct subscription_event *ev,
    struct json_object **reply) __attribute__((warn_unused_result));

/* What subscription_store_listed did. */
struct subscription_stored {
	int created;		/* the row is new */
	int refetched;		/* stored from GET /v1/subscriptions/<id> (see there) */
	int gone;		/* ...which answered 404: the row was left as it was */
	int skipped;		/* not storable (no valid id, unknown status): logged */
	int linked;		/* customers got the link claimed_user <-> its customer */
	int unlinked;		/* its customer is linked to no user */
	struct json_object *changes;	/* {"column": [before, after], ...}, NULL: none */
};

/*
 * Stores sub, a subscription object from a list taken at listed_at (unix
 * seconds, our clock), in the caller's transaction, by refetch mode's
 * code and rule: under the subscription's lock, Stripe's state is stored
 * whatever order things came in.  But when the row's last event is newer
 * than the listing (a webhook got there after the list was read), the
 * listing is stale: the subscription is fetched again under the lock and
 * that is stored.  The link between claimed_user (metadata.userId of the
 * subscription or of its customer; NULL: none) and the customer is made
 * when neither is linked yet; the owner of the row is the customer's
 * user.  OUT_OK with *out (release it with subscription_stored_free);
 * otherwise the caller rolls back: OUT_UNAVAILABLE, OUT_STRIPE_ERROR
 * (the refetch), OUT_INTERNAL.
 */
enum outcome subscription_store_listed(struct db *db, struct json_object *sub,
    long long listed_at, const char *claimed_user, struct subscription_stored *out)
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
