/*
 * A minimal TAP producer for unit tests (after Russ Allbery's
 * c-tap-harness): ok()/is_int()/is_str() print "ok N - name" or
 * "not ok N - name"; done_testing() prints the plan and returns the
 * exit status.
 */
#ifndef TAP_H
#define TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int tap_n, tap_failed;

#define ok(cond, ...) tap_ok(!!(cond), __FILE__, __LINE__, __VA_ARGS__)

static int __attribute__((format(printf, 4, 5), unused))
tap_ok(int pass, const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	tap_n++;
	printf("%sok %d - ", pass ? "" : "not ", tap_n);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	if (!pass) {
		tap_failed++;
		printf("# failed at %s:%d\n", file, line);
	}
	fflush(stdout);
	return pass;
}

#define is_int(got, want, ...) do {                                          \
	long long g_ = (long long)(got), w_ = (long long)(want);             \
	if (!ok(g_ == w_, __VA_ARGS__))                                      \
		printf("#   got %lld, want %lld\n", g_, w_);                  \
} while (0)

#define is_str(got, want, ...) do {                                          \
	const char *g_ = (got), *w_ = (want);                                \
	int same_ = (g_ == NULL && w_ == NULL) ||                            \
	    (g_ != NULL && w_ != NULL && strcmp(g_, w_) == 0);               \
	if (!ok(same_, __VA_ARGS__))                                         \
		printf("#   got \"%s\", want \"%s\"\n", g_ ? g_ : "(null)",     \
		    w_ ? w_ : "(null)");                                      \
} while (0)

static int __attribute__((unused))
done_testing(void)
{
	printf("1..%d\n", tap_n);
	return tap_failed ? 1 : 0;
}

#endif
