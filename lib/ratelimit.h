/*
 * Rate limits: at most N requests per window, per caller and per client
 * address, with the state in PostgreSQL so that every process on every
 * web host shares it.  Each check is ONE statement (GCRA, the generic
 * cell rate algorithm, over the UNLOGGED table rate_limits; see
 * ratelimit.c) run outside any transaction, so it works through
 * PgBouncer in transaction mode and is exact under concurrency: N
 * parallel requests against a limit of L let exactly L through.
 *
 * Answers carry the IETF httpapi draft's fields
 * (draft-ietf-httpapi-ratelimit-headers-10):
 *     RateLimit-Policy: "checkout";q=10;w=60
 *     RateLimit: "checkout";r=7;t=6
 * q/w the policy, r what is left now, t the seconds within which no more
 * than r are available (GCRA refills one request every w/q seconds).  Over
 * the limit: 429 rate_limited with r=0 and Retry-After = t.
 *
 * Endpoints do not call this module: serve does, from what the endpoint
 * declares (struct serve_endpoint.rate_limit; serve_limit_caller).
 */
#ifndef RATELIMIT_H
#define RATELIMIT_H

#include <stddef.h>

#include "db.h"
#include "outcome.h"

/*
 * What an endpoint declares.  name "CHECKOUT" reads the settings
 * RATE_LIMIT_CHECKOUT (per caller) and RATE_LIMIT_CHECKOUT_IP (per
 * client address); caller and address are their defaults ("10/60s").
 * name NULL: the endpoint is not limited.
 */
struct ratelimit_decl {
	const char *name;
	const char *caller;
	const char *address;
};

enum ratelimit_scope { RATELIMIT_CALLER, RATELIMIT_ADDRESS, RATELIMIT__MAX };

/* At most limit requests per window seconds; limit 0 = no limit. */
struct ratelimit_policy {
	long limit;
	long window;
};

/*
 * Parses a setting value: "0" (off), or "N/W" with N in
 * 1..LIMIT_RATE_MAX and W a number of seconds with an optional unit s, m
 * or h ("10/60s", "100/1h"), at most LIMIT_RATE_WINDOW_MAX seconds.
 * 0 and *p set, or -1 for anything else.
 */
int ratelimit_parse(const char *text, struct ratelimit_policy *p)
    __attribute__((warn_unused_result));

/*
 * The policy in force for scope of d: its setting, else the declared
 * default.  OUT_OK (p->limit 0 when off), or OUT_MISCONFIGURED with the
 * setting's name logged.
 */
enum outcome ratelimit_policy_for(const struct ratelimit_decl *d, enum ratelimit_scope scope,
				  struct ratelimit_policy *p) __attribute__((warn_unused_result));

/* The state of one subject after a check, as the headers tell it. */
struct ratelimit_state {
	int allowed;
	long remaining;	  /* r */
	long reset;	  /* t, seconds */
	long retry_after; /* seconds until one more request is allowed (>= 1 when refused) */
};

/*
 * GCRA's two durations for p (limit > 0), in microseconds: *t_us, the
 * emission interval, window / limit rounded UP, and *span_us = limit x
 * *t_us, how far ahead of now a subject's theoretical arrival time may
 * run.  Exactly `limit` requests fit in span at once, and quota comes back
 * no faster than limit per window.  (Rounded down and bounded by the
 * window, a window that limit does not divide let more through: 3000/1s,
 * T = 333 us, let 3003 through at once, and 3003 a second after.)
 */
void ratelimit_span(const struct ratelimit_policy *p, long long *t_us, long long *span_us);

/*
 * GCRA arithmetic (pure, for tests): given the policy, whether the
 * request was allowed and how far the subject's theoretical arrival
 * time is ahead of now (microseconds, after the check), fills st.
 */
void ratelimit_state_from(const struct ratelimit_policy *p, int allowed, long long ahead_us,
			  struct ratelimit_state *st);

/*
 * One check for subject (a caller key or a client address) under policy
 * p (limit > 0) of d's scope: the statement, then the RateLimit-Policy and
 * RateLimit headers queued; refused: Retry-After too and OUT_RATE_LIMITED.
 * A database failure is logged and lets the request through without
 * headers (a limiter that fails must not take the service down with it).
 * Call outside a transaction.  One call in LIMIT_RATE_PRUNE_ONE_IN also
 * deletes a bounded batch of expired rows: no cron job is needed.
 */
enum outcome ratelimit_check(struct db *db, const struct ratelimit_decl *d,
			     enum ratelimit_scope scope, const struct ratelimit_policy *p,
			     const char *subject) __attribute__((warn_unused_result));

/*
 * The client address for per-address limits, normalised (IPv4
 * dotted-quad; IPv6 as its /64 prefix, "2001:db8:1:2::/64", because one
 * client usually holds a whole /64; an IPv4-mapped IPv6 address as
 * IPv4).  It is REMOTE_ADDR, unless REMOTE_ADDR is in TRUSTED_PROXIES
 * (comma-separated addresses and CIDR prefixes): then X-Forwarded-For
 * is read from the right, skipping trusted proxies, and the first
 * address that is not one is the client (entries to its left are the
 * client's own claims and are never believed).  A malformed entry ends
 * the walk at the proxy that added it.  0 and out, or -1 when there is
 * no usable REMOTE_ADDR.
 */
int ratelimit_client_address(char *out, size_t n) __attribute__((warn_unused_result));

/* The same from explicit values (tests); xff and trusted may be NULL. */
int ratelimit_client_from(const char *remote_addr, const char *xff, const char *trusted, char *out,
			  size_t n) __attribute__((warn_unused_result));

#endif
