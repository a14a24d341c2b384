/*
 * lib/outbox without a database: the retry schedule.  Claiming and
 * recording are SQL against a real server in tests/test_mailer.py.
 */
#include "outbox.h"
#include "tap.h"

int
main(void)
{
	const struct outbox_policy p = { 10, 60, 21600 }, capped = { 10, 60, 3600 },
				   big = { 1000, 86400, 2592000 }, one = { 1, 60, 60 };
	int n;
	long prev = 0, w;

	is_int(outbox_backoff(&p, 1, 0.0), 30, "first failure, no jitter: half of 60 s");
	is_int(outbox_backoff(&p, 1, 0.999999), 59, "first failure, most jitter: just under 60 s");
	is_int(outbox_backoff(&p, 2, 0.0), 60, "second: half of 120 s");
	is_int(outbox_backoff(&p, 9, 0.5), 7680 + 3840, "ninth: 60 * 2^8 = 15360, halved plus half of the rest");
	is_int(outbox_backoff(&p, 10, 0.0), -1, "the tenth failure of ten attempts: give up");
	is_int(outbox_backoff(&p, 11, 0.0), -1, "and after that too");
	is_int(outbox_backoff(&capped, 8, 0.0), 1800, "the wait stops doubling at the maximum");
	is_int(outbox_backoff(&capped, 9, 0.999999), 3599, "and never passes it");
	is_int(outbox_backoff(&big, 999, 0.0), 1296000, "999 doublings do not overflow: half the maximum");
	is_int(outbox_backoff(&p, 1, -1.0), 30, "jitter out of range counts as none");
	is_int(outbox_backoff(&p, 1, 7.0), 30, "  both ways");
	is_int(outbox_backoff(&one, 1, 0.0), -1, "MAIL_MAX_ATTEMPTS=1: no retry");
	for (n = 1; n < 10; n++) {
		w = outbox_backoff(&p, n, 0.0);
		ok(w >= prev, "the minimum wait never shrinks (attempt %d: %ld s)", n, w);
		prev = w;
	}
	return done_testing();
}
