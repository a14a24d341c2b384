#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "config.h"
#include "limits.h"
#include "log.h"
#include "ratelimit.h"
#include "request.h"
#include "response.h"

#define US_PER_S 1000000LL

/* --- policies ----------------------------------------------------------------------- */

/* Reads 1..digits decimal digits at *s into *v; -1 when there are none or too many. */
static int
read_number(const char **s, int digits, long *v)
{
	const char *p = *s;

	*v = 0;
	while (isdigit((unsigned char)*p) && p - *s < digits)
		*v = *v * 10 + (*p++ - '0');
	if (p == *s || isdigit((unsigned char)*p))
		return -1;
	*s = p;
	return 0;
}

int
ratelimit_parse(const char *text, struct ratelimit_policy *p)
{
	const char *s = text;
	long n, w, unit = 1;

	if (s == NULL)
		return -1;
	if (strcmp(s, "0") == 0) {
		p->limit = 0;
		p->window = 0;
		return 0;
	}
	if (read_number(&s, 7, &n) == -1 || *s++ != '/' || read_number(&s, 6, &w) == -1)
		return -1;
	if (*s == 's')
		s++;
	else if (*s == 'm')
		unit = 60, s++;
	else if (*s == 'h')
		unit = 3600, s++;
	if (*s != '\0' || n < 1 || n > LIMIT_RATE_MAX || w < 1 || w * unit > LIMIT_RATE_WINDOW_MAX)
		return -1;
	p->limit = n;
	p->window = w * unit;
	return 0;
}

/* "RATE_LIMIT_CHECKOUT" / "RATE_LIMIT_CHECKOUT_IP" and their policy ids "checkout" / "checkout_ip".
 */
static int
names(const struct ratelimit_decl *d, enum ratelimit_scope scope, char *setting, size_t sn,
      char *id, size_t idn)
{
	const char *suffix = scope == RATELIMIT_ADDRESS ? "_IP" : "";
	size_t i;
	int w;

	w = snprintf(setting, sn, "RATE_LIMIT_%s%s", d->name, suffix);
	if (w < 0 || (size_t)w >= sn)
		return -1;
	w = snprintf(id, idn, "%s%s", d->name, suffix);
	if (w < 0 || (size_t)w >= idn)
		return -1;
	for (i = 0; id[i] != '\0'; i++)
		id[i] = (char)tolower((unsigned char)id[i]);
	return 0;
}

enum outcome
ratelimit_policy_for(const struct ratelimit_decl *d, enum ratelimit_scope scope,
		     struct ratelimit_policy *p)
{
	char setting[96], id[64];
	const char *v;

	p->limit = 0;
	p->window = 0;
	if (d == NULL || d->name == NULL)
		return OUT_OK;
	if (names(d, scope, setting, sizeof(setting), id, sizeof(id)) == -1) {
		log_msg("rate limit name too long");
		return OUT_MISCONFIGURED;
	}
	v = config_get_default(setting, scope == RATELIMIT_ADDRESS ? d->address : d->caller);
	if (v == NULL)
		return OUT_OK;
	if (ratelimit_parse(v, p) == -1) {
		log_msg("setting %s is not 0 or N/W (e.g. 10/60s)", setting);
		return OUT_MISCONFIGURED;
	}
	return OUT_OK;
}

/* --- GCRA ----------------------------------------------------------------------------- */

/*
 * GCRA (the generic cell rate algorithm of ATM networks, as in Brandur
 * Leach's and redis-cell's rate limiters) keeps ONE timestamp per
 * subject, the theoretical arrival time tat.  A request at now costs an
 * emission interval T = window / limit (in whole microseconds, rounded
 * up: ratelimit_span); it is allowed when
 *     max(tat, now) + T - now <= limit x T,
 * i.e. when at most `limit` requests are outstanding, and then tat
 * becomes max(tat, now) + T.  The bound is limit x T, not the window: T
 * is rounded, and only limit x T holds exactly `limit` of it.  Quota comes back one request
 * every T, not all at once at the end of a fixed window, so there is no
 * burst of 2 x limit across a window boundary.
 *
 * The statement does the whole check under the row lock that INSERT ...
 * ON CONFLICT DO UPDATE takes, reading the latest committed tat (READ
 * COMMITTED re-reads the row it waited for): concurrent requests for one
 * subject are serialised on that row, so exactly `limit` get through.
 * Every SET expression sees the row as it was, and RETURNING the row as
 * it is now; PostgreSQL 15 cannot return the old row, so the decision is
 * stored in `allowed` to come back out.  A refused request rewrites the
 * row unchanged (a HOT update of an unindexed column on an UNLOGGED
 * table: cheap).  statement_timestamp() is the one clock all web hosts
 * share.  What remains is measured from clock_timestamp(), read after the
 * row lock was taken: statement_timestamp() is read before the wait, so
 * of two requests queued on the row the later could have the earlier
 * clock, and both would report the same remaining quota.  $2 = T and $3 =
 * limit x T (ratelimit_span), in microseconds.
 *
 * Under one policy tat never runs more than span ahead.  A tat further
 * ahead was left by a policy with a longer window (10/1h changed to
 * 10/60s): a refusal brings it back to now + span, the whole burst of the
 * policy in force, so the subject waits T, not what is left of the old
 * hour, and Retry-After never exceeds the window the answer announces.
 */
static const char sql_take[] =
    "INSERT INTO rate_limits AS s (key, tat, allowed) "
    "VALUES ($1, statement_timestamp() + $2::bigint * interval '1 microsecond', true) "
    "ON CONFLICT (key) DO UPDATE SET "
    "allowed = greatest(s.tat, statement_timestamp()) + $2::bigint * interval '1 microsecond'"
    " <= statement_timestamp() + $3::bigint * interval '1 microsecond', "
    "tat = CASE WHEN greatest(s.tat, statement_timestamp()) + $2::bigint * interval '1 microsecond'"
    " <= statement_timestamp() + $3::bigint * interval '1 microsecond'"
    " THEN greatest(s.tat, statement_timestamp()) + $2::bigint * interval '1 microsecond'"
    " ELSE least(s.tat, statement_timestamp() + $3::bigint * interval '1 microsecond') END "
    "RETURNING s.allowed, (extract(epoch FROM s.tat - clock_timestamp()) * 1000000)::bigint";

/*
 * A row whose tat has passed says exactly what no row says (max(tat, now)
 * = now), so deleting it never changes a decision, even while a check of
 * the same key runs.  SKIP LOCKED: never wait for rows being checked.
 */
#define STR_(x) #x
#define STR(x) STR_(x)
static const char sql_prune[] = "DELETE FROM rate_limits WHERE key IN (SELECT key FROM rate_limits"
				" WHERE tat < statement_timestamp() LIMIT " STR(
				    LIMIT_RATE_PRUNE_BATCH) " FOR UPDATE SKIP LOCKED)";

void
ratelimit_span(const struct ratelimit_policy *p, long long *t_us, long long *span_us)
{
	long long w = p->window * US_PER_S;

	*t_us = (w + p->limit - 1) / p->limit;
	*span_us = *t_us * p->limit;
}

static long
ceil_seconds(long long us)
{
	return us <= 0 ? 0 : (long)((us + US_PER_S - 1) / US_PER_S);
}

void
ratelimit_state_from(const struct ratelimit_policy *p, int allowed, long long ahead_us,
		     struct ratelimit_state *st)
{
	long long t, w;

	ratelimit_span(p, &t, &w);
	if (ahead_us < 0)
		ahead_us = 0;
	st->allowed = allowed;
	/*
	 * Refused: nothing remained when it was decided, whatever the clock
	 * says now (ahead_us is read after the row lock's wait; see sql_take).
	 */
	st->remaining = !allowed || ahead_us >= w ? 0 : (long)((w - ahead_us) / t);
	/* Until one request more than `remaining` fits: within it, no more than r. */
	st->reset = ceil_seconds(ahead_us + (st->remaining + 1) * t - w);
	st->retry_after = 0;
	if (!allowed) {
		st->retry_after = ceil_seconds(ahead_us + t - w);
		if (st->retry_after < 1)
			st->retry_after = 1;
	}
}

static void
maybe_prune(struct db *db)
{
	if (arc4random_uniform(LIMIT_RATE_PRUNE_ONE_IN) != 0)
		return;
	if (db_exec(db, NULL, sql_prune, 0, NULL) != DB_OK)
		log_msg("pruning rate_limits failed");
}

enum outcome
ratelimit_check(struct db *db, const struct ratelimit_decl *d, enum ratelimit_scope scope,
		const struct ratelimit_policy *p, const char *subject)
{
	struct buf key = BUF_INIT(LIMIT_RATE_KEY);
	struct db_rows *rows = NULL;
	struct ratelimit_state st;
	char setting[96], id[64], t_us[24], w_us[24];
	const char *allowed, *ahead;
	long long t, span;
	enum outcome rc = OUT_OK;

	if (p->limit <= 0)
		goto out;
	if (names(d, scope, setting, sizeof(setting), id, sizeof(id)) == -1 ||
	    buf_printf(&key, "%s %s", id, subject) == -1) {
		log_msg("rate limit key too long: not checked");
		goto out;
	}
	ratelimit_span(p, &t, &span);
	snprintf(t_us, sizeof(t_us), "%lld", t);
	snprintf(w_us, sizeof(w_us), "%lld", span);
	if (DB_QUERY(db, &rows, sql_take, buf_str(&key), t_us, w_us) != DB_OK ||
	    db_rows_count(rows) != 1 || (allowed = db_rows_get(rows, 0, 0)) == NULL ||
	    (ahead = db_rows_get(rows, 0, 1)) == NULL) {
		log_msg("rate limit %s not checked: database error", id);
		goto out;
	}
	ratelimit_state_from(p, strcmp(allowed, "t") == 0, strtoll(ahead, NULL, 10), &st);
	response_header("RateLimit-Policy", "\"%s\";q=%ld;w=%ld", id, p->limit, p->window);
	response_header("RateLimit", "\"%s\";r=%ld;t=%ld", id, st.remaining, st.reset);
	if (!st.allowed) {
		response_header("Retry-After", "%ld", st.retry_after);
		log_note("rate_limited", id);
		rc = OUT_RATE_LIMITED;
	}
	maybe_prune(db);
out:
	db_rows_free(rows);
	buf_free(&key);
	return rc;
}

/* --- the client address ----------------------------------------------------------------- */

struct addr {
	int family;	     /* AF_INET or AF_INET6 */
	unsigned char b[16]; /* network order; IPv4 in the first 4 */
};

/*
 * One address as REMOTE_ADDR or an X-Forwarded-For entry gives it:
 * "192.0.2.1", "2001:db8::1", and the forms some proxies add,
 * "192.0.2.1:4711" and "[2001:db8::1]:4711".  An IPv4-mapped IPv6
 * address is its IPv4 address.
 */
static int
addr_parse(const char *s, size_t n, struct addr *a)
{
	static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	char text[64];
	const char *colon;

	if (n == 0 || n >= sizeof(text))
		return -1;
	memcpy(text, s, n);
	text[n] = '\0';
	if (text[0] == '[') {
		char *close = strchr(text, ']');

		if (close == NULL || (close[1] != '\0' && close[1] != ':'))
			return -1;
		*close = '\0';
		memmove(text, text + 1, strlen(text + 1) + 1);
	} else if ((colon = strchr(text, ':')) != NULL && strchr(colon + 1, ':') == NULL) {
		text[colon - text] = '\0'; /* a.b.c.d:port */
	}
	memset(a, 0, sizeof(*a));
	if (inet_pton(AF_INET, text, a->b) == 1) {
		a->family = AF_INET;
		return 0;
	}
	if (inet_pton(AF_INET6, text, a->b) != 1)
		return -1;
	a->family = AF_INET6;
	if (memcmp(a->b, mapped, sizeof(mapped)) == 0) {
		memmove(a->b, a->b + 12, 4);
		memset(a->b + 4, 0, 12);
		a->family = AF_INET;
	}
	return 0;
}

static int
prefix_match(const struct addr *a, const struct addr *net, int bits)
{
	int full = bits / 8, rest = bits % 8;

	if (a->family != net->family)
		return 0;
	if (memcmp(a->b, net->b, (size_t)full) != 0)
		return 0;
	return rest == 0 || ((a->b[full] ^ net->b[full]) & (0xff << (8 - rest)) & 0xff) == 0;
}

static void
trim(const char **s, const char **e)
{
	while (*s < *e && (**s == ' ' || **s == '\t'))
		(*s)++;
	while (*e > *s && ((*e)[-1] == ' ' || (*e)[-1] == '\t'))
		(*e)--;
}

/* Whether a is in the comma-separated list of addresses and CIDR prefixes. */
static int
is_trusted(const struct addr *a, const char *list)
{
	const char *cursor = list, *s, *e, *slash;
	struct addr net;
	size_t n;
	long bits;
	char *end;

	while (config_list_next(&cursor, &s, &n)) {
		e = s + n;
		slash = memchr(s, '/', n);
		if (addr_parse(s, (size_t)((slash ? slash : e) - s), &net) == -1)
			continue;
		bits = net.family == AF_INET ? 32 : 128;
		if (slash != NULL) {
			bits = strtol(slash + 1, &end, 10);
			if (end != e || slash + 1 == e || bits < 0 ||
			    bits > (net.family == AF_INET ? 32 : 128))
				continue;
		}
		if (prefix_match(a, &net, (int)bits))
			return 1;
	}
	return 0;
}

static int
addr_format(const struct addr *a, char *out, size_t n)
{
	unsigned char b[16];
	char text[INET6_ADDRSTRLEN];

	if (a->family == AF_INET)
		return inet_ntop(AF_INET, a->b, out, (socklen_t)n) ? 0 : -1;
	memcpy(b, a->b, 8);
	memset(b + 8, 0, 8);
	if (inet_ntop(AF_INET6, b, text, sizeof(text)) == NULL)
		return -1;
	return snprintf(out, n, "%s/64", text) < (int)n ? 0 : -1;
}

int
ratelimit_client_from(const char *remote_addr, const char *xff, const char *trusted, char *out,
		      size_t n)
{
	struct addr client, hop;
	const char *end, *start, *s, *e;

	if (remote_addr == NULL || addr_parse(remote_addr, strlen(remote_addr), &client) == -1)
		return -1;
	if (xff != NULL && trusted != NULL && is_trusted(&client, trusted)) {
		/* Right to left: each entry was added by the hop to its right. */
		for (end = xff + strlen(xff); end > xff; end = start - 1) {
			for (start = end; start > xff && start[-1] != ','; start--)
				;
			s = start;
			e = end;
			trim(&s, &e);
			if (addr_parse(s, (size_t)(e - s), &hop) == -1)
				break;
			client = hop;
			if (!is_trusted(&client, trusted) || start == xff)
				break;
		}
	}
	return addr_format(&client, out, n);
}

int
ratelimit_client_address(char *out, size_t n)
{
	return ratelimit_client_from(request_env("REMOTE_ADDR"), request_header("X-Forwarded-For"),
				     config_get("TRUSTED_PROXIES"), out, n);
}
