/*
 * lib/ratelimit without a database: parsing the RATE_LIMIT_* settings,
 * the GCRA arithmetic behind the RateLimit headers, and finding the
 * client address behind trusted and untrusted proxies.  The statement
 * itself runs against a real server in tests/test_ratelimit.py.
 */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "ratelimit.h"
#include "tap.h"

static const struct {
	const char *text;
	long limit, window; /* -1: refused */
} policies[] = {
    {"0", 0, 0},
    {"10/60s", 10, 60},
    {"10/60", 10, 60},
    {"5/2m", 5, 120},
    {"1000/1h", 1000, 3600},
    {"1/24h", 1, 86400},
    {"1000000/1s", 1000000, 1},
    {"1000001/1s", -1, -1},
    {"1/25h", -1, -1},
    {"0/60s", -1, -1},
    {"10/0s", -1, -1},
    {"10", -1, -1},
    {"10/", -1, -1},
    {"/60s", -1, -1},
    {"10/60x", -1, -1},
    {"10/60s ", -1, -1},
    {" 10/60s", -1, -1},
    {"-1/60s", -1, -1},
    {"10/-60s", -1, -1},
    {"10/60ss", -1, -1},
    {"00", -1, -1},
    {"", -1, -1},
    {"99999999999999999999/1s", -1, -1},
};

static void
test_parse(void)
{
	struct ratelimit_policy p;
	size_t i;

	for (i = 0; i < sizeof(policies) / sizeof(policies[0]); i++) {
		int rc = ratelimit_parse(policies[i].text, &p);

		if (policies[i].limit < 0)
			is_int(rc, -1, "\"%s\" refused", policies[i].text);
		else
			ok(rc == 0 && p.limit == policies[i].limit &&
			       p.window == policies[i].window,
			   "\"%s\" is %ld per %ld s", policies[i].text, policies[i].limit,
			   policies[i].window);
	}
	is_int(ratelimit_parse(NULL, &p), -1, "NULL refused");
}

static void
test_settings(void)
{
	const struct ratelimit_decl d = {"CHECKOUT", "10/60s", "60/60s"};
	const struct ratelimit_decl none = {NULL, NULL, NULL};
	struct ratelimit_policy p;

	unsetenv("RATE_LIMIT_CHECKOUT");
	unsetenv("RATE_LIMIT_CHECKOUT_IP");
	ok(ratelimit_policy_for(&d, RATELIMIT_CALLER, &p) == OUT_OK && p.limit == 10 &&
	       p.window == 60,
	   "default per caller");
	ok(ratelimit_policy_for(&d, RATELIMIT_ADDRESS, &p) == OUT_OK && p.limit == 60,
	   "default per address");
	setenv("RATE_LIMIT_CHECKOUT", "3/1m", 1);
	setenv("RATE_LIMIT_CHECKOUT_IP", "0", 1);
	ok(ratelimit_policy_for(&d, RATELIMIT_CALLER, &p) == OUT_OK && p.limit == 3 &&
	       p.window == 60,
	   "RATE_LIMIT_CHECKOUT wins over the default");
	ok(ratelimit_policy_for(&d, RATELIMIT_ADDRESS, &p) == OUT_OK && p.limit == 0,
	   "RATE_LIMIT_CHECKOUT_IP=0 turns the address limit off");
	setenv("RATE_LIMIT_CHECKOUT", "ten a minute", 1);
	is_int(ratelimit_policy_for(&d, RATELIMIT_CALLER, &p), OUT_MISCONFIGURED,
	       "a malformed setting is misconfigured");
	ok(ratelimit_policy_for(&none, RATELIMIT_CALLER, &p) == OUT_OK && p.limit == 0,
	   "no declaration: no limit");
	unsetenv("RATE_LIMIT_CHECKOUT");
	unsetenv("RATE_LIMIT_CHECKOUT_IP");
}

/*
 * Simulates GCRA as the SQL statement runs it, at times given in
 * microseconds, and checks what the headers would say.
 */
struct sim {
	struct ratelimit_policy p;
	long long tat;
};

static int
take(struct sim *s, long long now, struct ratelimit_state *st)
{
	long long t, span, base = s->tat > now ? s->tat : now;
	int allowed;

	ratelimit_span(&s->p, &t, &span);
	allowed = base + t - now <= span;

	if (allowed)
		s->tat = base + t;
	ratelimit_state_from(&s->p, allowed, s->tat - now, st);
	return allowed;
}

static void
test_gcra(void)
{
	struct sim s = {{10, 60}, 0};
	struct ratelimit_state st;
	int i, n = 0, ok_remaining = 1;

	for (i = 0; i < 10; i++) {
		n += take(&s, 1000, &st);
		if (st.remaining != 9 - i)
			ok_remaining = 0;
	}
	ok(n == 10 && ok_remaining, "10 at once against 10/60s: all allowed, r counts 9..0");
	is_int(st.reset, 6, "with r=0, t is the 6 s until the next request fits");
	ok(!take(&s, 1000, &st) && st.remaining == 0 && st.retry_after == 6 && st.reset == 6,
	   "the 11th is refused: r=0, Retry-After 6 = t");
	ok(!take(&s, 1000 + 5999999, &st) && st.retry_after == 1,
	   "refused 1 us early: Retry-After rounds up to 1");
	ok(take(&s, 1000 + 6000000, &st) && st.remaining == 0,
	   "allowed again after 6 s, one request's worth");
	ok(take(&s, 1000 + 60000000 + 6000000, &st) && st.remaining == 9 && st.reset == 6,
	   "a quiet minute later: full quota back, r=9 after this one");

	/* A rate that does not divide: 7 per 60 s still lets exactly 7 through at once. */
	struct sim s7 = {{7, 60}, 0};
	for (i = 0, n = 0; i < 20; i++)
		n += take(&s7, 5, &st);
	is_int(n, 7, "7/60s: exactly 7 of 20 at once");
	ok(st.retry_after >= 8 && st.retry_after <= 9, "... then Retry-After ~60/7 s (%ld)",
	   st.retry_after);

	/*
	 * Windows the limit does not divide, where T rounded down let more
	 * through: 3000/1s (T 333 us: 3003 fit in 1 s) and 700000/24h.
	 */
	struct sim odd = {{3000, 1}, 0};
	for (i = 0, n = 0; i < 3100; i++)
		n += take(&odd, 0, &st);
	is_int(n, 3000, "3000/1s: exactly 3000 of 3100 at once");
	for (i = 0, n = 0; i < 40000; i++)
		n += take(&odd, 1000000 + i * 250LL, &st);
	/* The burst is back after 1 s; then one request per 1/3000 s at most. */
	ok(n <= 3000 + 10 * 3000, "... then 4000/s for 10 s: at most 3000 + 10 x 3000 (%d)", n);
	struct sim day = {{700000, 86400}, 0};
	take(&day, 0, &st);
	is_int(st.remaining, 699999, "700000/24h first request: r=699999");

	/* Fast refill: 600/60s gives one request back every 100 ms. */
	struct sim fast = {{600, 60}, 0};
	take(&fast, 0, &st);
	ok(st.remaining == 599 && st.reset == 1, "600/60s first request: r=599, t=1 (%ld, %ld)",
	   st.remaining, st.reset);

	/*
	 * Refused, with the clock read after a wait for the row: its quota
	 * came back meanwhile (ahead 59.7 s of 60 against 600/60s would be
	 * r=3), but a refusal says r=0.
	 */
	ratelimit_state_from(&fast.p, 0, 59700000, &st);
	ok(!st.allowed && st.remaining == 0 && st.retry_after >= 1,
	   "refused after a wait: r=0 (%ld), Retry-After %ld", st.remaining, st.retry_after);
}

static const struct {
	const char *remote, *xff, *trusted, *want; /* want NULL: -1 */
	const char *name;
} clients[] = {
    {"203.0.113.7", NULL, NULL, "203.0.113.7", "no proxy: REMOTE_ADDR"},
    {"203.0.113.7", "198.51.100.1", NULL, "203.0.113.7",
     "X-Forwarded-For ignored without TRUSTED_PROXIES"},
    {"203.0.113.7", "198.51.100.1", "10.0.0.1", "203.0.113.7",
     "X-Forwarded-For ignored from an untrusted REMOTE_ADDR"},
    {"10.0.0.1", "198.51.100.1", "10.0.0.1", "198.51.100.1",
     "trusted proxy: the address it forwarded for"},
    {"10.0.0.1", "6.6.6.6, 198.51.100.1", "10.0.0.1", "198.51.100.1",
     "a spoofed entry left of the real one is never believed"},
    {"10.0.0.1", "198.51.100.1, 10.0.0.9", "10.0.0.0/8", "198.51.100.1",
     "two trusted hops (CIDR) are skipped"},
    {"10.0.0.1", "10.0.0.8,10.0.0.9", "10.0.0.0/8", "10.0.0.8", "all hops trusted: the leftmost"},
    {"10.0.0.1", "", "10.0.0.1", "10.0.0.1", "empty X-Forwarded-For: REMOTE_ADDR"},
    {"10.0.0.1", "garbage", "10.0.0.1", "10.0.0.1", "a malformed entry: the proxy that added it"},
    {"10.0.0.1", "198.51.100.1, junk", "10.0.0.1", "10.0.0.1",
     "a malformed last entry stops the walk at the proxy"},
    {"10.0.0.1", "198.51.100.1:4711", "10.0.0.1", "198.51.100.1",
     "a port after an IPv4 address is dropped"},
    {"10.0.0.1", "[2001:db8:1:2:3:4:5:6]:443", "10.0.0.1", "2001:db8:1:2::/64",
     "bracketed IPv6 with a port, as its /64"},
    {"2001:db8::1", NULL, NULL, "2001:db8::/64", "IPv6 REMOTE_ADDR as its /64"},
    {"2001:db8:aaaa:bbbb:1::2", NULL, NULL, "2001:db8:aaaa:bbbb::/64",
     "the host part of IPv6 is dropped"},
    {"::ffff:192.0.2.5", NULL, NULL, "192.0.2.5", "IPv4-mapped IPv6 is IPv4"},
    {"fd00::1", "192.0.2.44", "fd00::/8", "192.0.2.44", "IPv6 CIDR of trusted proxies"},
    {"10.0.0.1", "192.0.2.44", " 192.168.0.0/16 , 10.0.0.1 ", "192.0.2.44",
     "list entries are trimmed"},
    {"10.0.0.1", "192.0.2.44", "10.0.0.0/33, nonsense", "10.0.0.1",
     "malformed list entries trust nothing"},
    {"10.0.0.1", "192.0.2.44", "10.0.0.0/7", "192.0.2.44", "a /7 prefix"},
    {"11.0.0.1", "192.0.2.44", "10.0.0.0/8", "11.0.0.1", "outside the /8"},
    {"", NULL, NULL, NULL, "empty REMOTE_ADDR: no address"},
    {NULL, NULL, NULL, NULL, "no REMOTE_ADDR: no address"},
    {"not-an-address", NULL, NULL, NULL, "malformed REMOTE_ADDR: no address"},
};

static void
test_clients(void)
{
	char out[64];
	size_t i;

	for (i = 0; i < sizeof(clients) / sizeof(clients[0]); i++) {
		int rc = ratelimit_client_from(clients[i].remote, clients[i].xff,
					       clients[i].trusted, out, sizeof(out));

		if (clients[i].want == NULL)
			is_int(rc, -1, "%s", clients[i].name);
		else if (!ok(rc == 0 && strcmp(out, clients[i].want) == 0, "%s", clients[i].name))
			printf("#   got %d \"%s\", want \"%s\"\n", rc, rc == 0 ? out : "",
			       clients[i].want);
	}
}

int
main(void)
{
	test_parse();
	test_settings();
	test_gcra();
	test_clients();
	return done_testing();
}
