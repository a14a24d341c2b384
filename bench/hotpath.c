/*
 * The two things every request now does, timed in isolation (bench/
 * ratelimit-metrics.sh runs this against its own PostgreSQL; not a test):
 *
 *   hotpath limit N         N rate-limit checks of one subject that are all
 *                           allowed (ratelimit_check: the statement, the
 *                           headers), on the connection in DATABASE_URL
 *   hotpath refused N       N checks of a subject that is over its limit
 *   hotpath new N           N checks of N new subjects (the INSERT path)
 *   hotpath select1 N       N round trips of SELECT 1, for scale
 *   hotpath counter N       N counter updates (metrics_request) in a process
 *                           that has the file mapped (FastCGI; every update
 *                           after the first in a CGI)
 *   hotpath first N         N fresh processes (this program run again), each
 *                           timing its first update: open + mmap + slot lookup
 *                           + add, what a plain CGI pays once per request
 *
 * Prints one line: what, count, median, p99 and mean in microseconds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "db.h"
#include "log.h"
#include "metrics.h"
#include "ratelimit.h"
#include "response.h"

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int
cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void
report(const char *what, double *t, long n)
{
	double sum = 0;
	long i;

	qsort(t, (size_t)n, sizeof(*t), cmp);
	for (i = 0; i < n; i++)
		sum += t[i];
	printf("%-10s n=%-8ld median %9.3f us   p99 %9.3f us   mean %9.3f us\n", what, n, t[n / 2],
	       t[(long)(n * 0.99)], sum / (double)n);
}

static int
bench_db(const char *mode, long n, double *t)
{
	const struct ratelimit_decl decl = {"BENCH", NULL, NULL};
	struct ratelimit_policy p;
	struct db *db = NULL;
	char subject[64];
	long i;
	int rc;

	if (db_connect(&db) != OUT_OK)
		return -1;
	/* allowed: a policy nobody reaches; refused: one request a day, already taken. */
	if (ratelimit_parse(strcmp(mode, "refused") == 0 ? "1/24h" : "1000000/1s", &p) == -1)
		return -1;
	snprintf(subject, sizeof(subject), "bench-%ld-%d", (long)time(NULL), (int)getpid());
	if (strcmp(mode, "refused") == 0) {
		response_begin(NULL, 0);
		if (ratelimit_check(db, &decl, RATELIMIT_CALLER, &p, subject) != OUT_OK)
			return -1;
	}
	for (i = 0; i < n; i++) {
		double t0;

		response_begin(NULL, 0); /* forget the headers queued by the last one */
		if (strcmp(mode, "new") == 0)
			snprintf(subject, sizeof(subject), "bench-new-%d-%ld", (int)getpid(), i);
		t0 = now_us();
		if (strcmp(mode, "select1") == 0)
			rc = db_exec(db, NULL, "SELECT 1", 0, NULL) == DB_OK ? 0 : -1;
		else
			rc = ratelimit_check(db, &decl, RATELIMIT_CALLER, &p, subject) ==
				     (strcmp(mode, "refused") == 0 ? OUT_RATE_LIMITED : OUT_OK)
				 ? 0
				 : -1;
		t[i] = now_us() - t0;
		if (rc == -1) {
			fprintf(stderr, "hotpath: %s check %ld failed\n", mode, i);
			return -1;
		}
	}
	db_close(db);
	return 0;
}

/* A fresh program's first update, as a CGI makes it: this program run again. */
static int
bench_first(long n, double *t)
{
	char self[4096], cmd[4200], line[64];
	ssize_t len;
	long i;
	FILE *f;

	if ((len = readlink("/proc/self/exe", self, sizeof(self) - 1)) == -1)
		return -1;
	self[len] = '\0';
	snprintf(cmd, sizeof(cmd), "exec '%s' once 1", self);
	for (i = 0; i < n; i++) {
		if ((f = popen(cmd, "r")) == NULL)
			return -1;
		if (fgets(line, sizeof(line), f) == NULL || pclose(f) != 0)
			return -1;
		t[i] = atof(line);
	}
	return 0;
}

int
main(int argc, char **argv)
{
	long n, i, batch = 1000;
	double *t;
	int rc = 0;

	if (argc != 3 || (n = atol(argv[2])) < 1) {
		fprintf(stderr, "usage: hotpath limit|refused|new|select1|counter|first N\n");
		return 2;
	}
	log_begin("bench");
	t = calloc((size_t)n, sizeof(*t));
	if (t == NULL)
		return 2;
	if (strcmp(argv[1], "counter") == 0) {
		if (getenv("METRICS_DIR") == NULL)
			return 2;
		metrics_request("bench", 200, 1000); /* map the file once */
		/* Per batch: one update takes ~10 ns, below the clock's resolution. */
		n = n < batch ? 1 : n / batch;
		for (i = 0; i < n; i++) {
			double t0 = now_us();
			long j;

			for (j = 0; j < batch; j++)
				metrics_request("bench", 200, j);
			t[i] = (now_us() - t0) / (double)batch;
		}
	} else if (strcmp(argv[1], "once") == 0) {
		double t0 = now_us();

		metrics_request("bench", 200, 1000);
		printf("%.3f\n", now_us() - t0);
		return 0;
	} else if (strcmp(argv[1], "first") == 0) {
		rc = bench_first(n, t);
	} else {
		rc = bench_db(argv[1], n, t);
	}
	if (rc == 0)
		report(argv[1], t, n);
	free(t);
	return rc == 0 ? 0 : 1;
}
