/*
 * Counters for monitoring, shared by every process of a web host without
 * a database write: a small memory-mapped file, <METRICS_DIR>/billing-
 * metrics.v1, of fixed layout (a versioned header, then 256 slots of
 * 512 bytes, see metrics.c), updated with atomic adds.  A plain CGI maps
 * it for its one request, a FastCGI process once; counts survive the
 * processes that made them and restarts of Apache, and start again from
 * zero only when the file is deleted (Prometheus takes that as a counter
 * reset).  An update costs well under a microsecond once mapped.
 *
 * A slot is one labelled series (an endpoint, a webhook event type, ...)
 * claimed by the first process that needs it; the /metrics program
 * (cgi-bin/metrics.c) renders them in the Prometheus text format next
 * to business figures read from the database at scrape time.
 *
 * Without METRICS_DIR nothing is counted; a file that cannot be created
 * or does not have this layout is logged and counting is off for that
 * process.  Requests never fail because of metrics.
 */
#ifndef METRICS_H
#define METRICS_H

#include "buf.h"
#include "db.h"

/* The media type of the text exposition format. */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* One request served by endpoint: its status (class 1xx..5xx) and duration. */
void metrics_request(const char *endpoint, int status, long long duration_us);

/* A 429 from the per-caller or per-address limit ("caller" / "address"). */
void metrics_rate_limited(const char *endpoint, const char *scope);

/*
 * A verified webhook event of type (Stripe's, e.g. "invoice.paid") and
 * its result: "applied", "duplicate", "ignored" or "failed" (not stored;
 * Stripe will redeliver).  Types that are not [a-z0-9._] of at most 55
 * bytes count as "other".
 */
void metrics_webhook_event(const char *type, const char *result);

/* A delivery refused before it was an event: reason is the outcome code. */
void metrics_webhook_rejected(const char *reason);

/* Processing lag of a verified event: received time - Stripe's `created`, seconds. */
void metrics_webhook_lag(long long seconds);

/* A usage POST refused with 402 (quota exceeded) for a user on tier. */
void metrics_usage_breach(const char *tier, const char *usage_type);

/*
 * Appends the host's counters in the Prometheus text exposition format
 * (HELP and TYPE for every family, even without samples).  0, or -1
 * when out would pass its ceiling.
 */
int metrics_render_counters(struct buf *out) __attribute__((warn_unused_result));

/*
 * Appends the business gauges, read with one statement (metrics_gauges()
 * in sql/schema.sql), and billing_database_up.  db NULL or a failed query
 * give billing_database_up 0 only.  0, or -1 when out is full.
 */
int metrics_render_business(struct db *db, struct buf *out) __attribute__((warn_unused_result));

/* Forgets the mapping (tests; a FastCGI process keeps it). */
void metrics_reset(void);

#endif
