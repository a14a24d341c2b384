/*
 * GET /metrics: this web host's figures for Prometheus, in the text
 * exposition format (prometheus.io/docs/instrumenting/exposition_formats).
 *
 * The story: is the caller the operator (Apache authenticated the request,
 * or `Authorization: Bearer <METRICS_TOKEN>`) -> this host's counters from
 * the metrics file (METRICS_DIR; requests, durations, 429s, webhook events
 * and lag, 402s) -> the business gauges read from PostgreSQL now
 * (metrics_gauges() in sql/schema.sql) -> one text answer.  The database
 * being down does not fail the scrape: the counters still go out, with
 * billing_database_up 0.  Each web host has its own counters; the README
 * says how Prometheus scrapes several.
 */
#include "auth.h"
#include "buf.h"
#include "limits.h"
#include "metrics.h"
#include "request.h"
#include "response.h"
#include "serve.h"

static void
metrics(struct serve *srv, struct request *req)
{
	struct buf out = BUF_INIT(LIMIT_METRICS_BODY);
	struct db *db = NULL;
	enum outcome rc;

	(void)req;
	if ((rc = auth_operator("METRICS_TOKEN")) != OUT_OK) {
		response_error(rc, NULL);
		goto out;
	}
	if (serve_db(srv, &db) != OUT_OK)
		db = NULL;
	if (metrics_render_counters(&out) == -1 || metrics_render_business(db, &out) == -1) {
		response_error(OUT_INTERNAL, "The metrics do not fit in the answer.");
		goto out;
	}
	response_body(200, METRICS_CONTENT_TYPE, buf_str(&out), out.len);
out:
	buf_free(&out);
}

/* Prometheus is no browser: no CORS.  Scrapes are authenticated: no rate limit. */
static const struct serve_endpoint endpoint = {
    .name = "metrics",
    .methods = "GET",
    .cors = 0,
    .handle = metrics,
};

int
main(void)
{
	return serve_main(&endpoint);
}
