/*
 * lib/metrics: the counter file shared by processes.  N processes start
 * together with no file yet (so they also race to create it and to claim
 * the same series) and each makes M updates of several series: every
 * total must be exactly N x M, there must be one file of the documented
 * size and no temporary left behind, and a file of another layout must be
 * left alone.  The rendering is checked line by line here and with
 * promtool in tests/test_metrics.py.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "buf.h"
#include "metrics.h"
#include "tap.h"

#define NPROC 8
#define M 20000
#define NTYPES 16
#define FILE_BYTES (64 + 256 * 512)

static char dir[] = "/tmp/test-metrics-XXXXXX";

/* The value of the sample line that starts with prefix ("name{labels} "), or -1. */
static long long
value_of(const char *text, const char *prefix)
{
	const char *p = text;
	size_t n = strlen(prefix);

	while ((p = strstr(p, prefix)) != NULL) {
		if (p == text || p[-1] == '\n')
			return strtoll(p + n, NULL, 10);
		p += n;
	}
	return -1;
}

static char *
render(void)
{
	struct buf out = BUF_INIT(1024 * 1024);

	if (metrics_render_counters(&out) == -1)
		return NULL;
	return buf_detach(&out, NULL);
}

static void
worker(int start_fd, int id)
{
	char type[32], c;
	int i;

	/* Wait until the parent lets everyone go at once. */
	if (read(start_fd, &c, 1) != 0)
		_exit(2);
	for (i = 0; i < M; i++) {
		snprintf(type, sizeof(type), "race.type_%d", (i + id) % NTYPES);
		metrics_webhook_event(type, "applied");
		metrics_webhook_rejected("signature_mismatch");
		metrics_request("usage", i % 2 ? 200 : 429, 1234);
	}
	metrics_webhook_lag(id);
	_exit(0);
}

static void
test_shared(void)
{
	int gate[2], status, i, clean = 1, files = 0, temps = 0;
	long long all_types = 0, v;
	pid_t pids[NPROC];
	char prefix[128], path[256], *text;
	struct dirent *e;
	struct stat st;
	DIR *d;

	if (pipe(gate) == -1)
		exit(2);
	for (i = 0; i < NPROC; i++) {
		if ((pids[i] = fork()) == 0) {
			close(gate[1]);
			worker(gate[0], i);
		}
	}
	close(gate[0]);
	close(gate[1]); /* EOF: all start */
	for (i = 0; i < NPROC; i++)
		if (waitpid(pids[i], &status, 0) == -1 || !WIFEXITED(status) ||
		    WEXITSTATUS(status) != 0)
			clean = 0;
	ok(clean, "%d processes made %d updates each and exited cleanly", NPROC, M);

	if ((d = opendir(dir)) != NULL) {
		while ((e = readdir(d)) != NULL) {
			if (strcmp(e->d_name, "billing-metrics.v1") == 0)
				files++;
			else if (e->d_name[0] != '.' || strlen(e->d_name) > 2)
				temps++;
		}
		closedir(d);
	}
	ok(files == 1 && temps == 0, "one file, no temporary left over (%d, %d)", files, temps);
	snprintf(path, sizeof(path), "%s/billing-metrics.v1", dir);
	ok(stat(path, &st) == 0 && st.st_size == FILE_BYTES && (st.st_mode & 0777) == 0600,
	   "its size is %d bytes, mode 0600", FILE_BYTES);

	/* This process opens the file the workers made: the counts outlived them. */
	text = render();
	ok(text != NULL, "rendered");
	if (text == NULL)
		return;
	is_int(value_of(text, "billing_webhook_rejected_total{reason=\"signature_mismatch\"} "),
	       (long long)NPROC * M, "rejections: N x M, no update lost");
	is_int(value_of(text, "billing_http_requests_total{endpoint=\"usage\",code=\"2xx\"} "),
	       (long long)NPROC * M / 2, "2xx: N x M / 2");
	is_int(value_of(text, "billing_http_requests_total{endpoint=\"usage\",code=\"4xx\"} "),
	       (long long)NPROC * M / 2, "4xx: N x M / 2");
	is_int(value_of(text, "billing_http_requests_total{endpoint=\"usage\",code=\"5xx\"} "), 0,
	       "5xx: 0, and the zero is there");
	is_int(value_of(text, "billing_http_request_duration_seconds_bucket{endpoint=\"usage\","
			      "le=\"0.001\"} "),
	       -1, "no 1 ms bucket: the buckets are Prometheus' defaults");
	is_int(value_of(text, "billing_http_request_duration_seconds_bucket{endpoint=\"usage\","
			      "le=\"0.005\"} "),
	       (long long)NPROC * M, "1.234 ms requests are all in le=0.005");
	is_int(value_of(text, "billing_http_request_duration_seconds_bucket{endpoint=\"usage\","
			      "le=\"+Inf\"} "),
	       (long long)NPROC * M, "... and in +Inf");
	is_int(value_of(text, "billing_http_request_duration_seconds_count{endpoint=\"usage\"} "),
	       (long long)NPROC * M, "_count = N x M");
	ok(strstr(text,
		  "billing_http_request_duration_seconds_sum{endpoint=\"usage\"} 197.440000\n") !=
	       NULL,
	   "_sum = N x M x 1.234 ms = 197.44 s");
	for (i = 0; i < NTYPES; i++) {
		snprintf(prefix, sizeof(prefix),
			 "billing_webhook_events_total{type=\"race.type_%d\",result=\"applied\"} ",
			 i);
		v = value_of(text, prefix);
		if (v == (long long)NPROC * M / NTYPES)
			all_types++;
	}
	is_int(all_types, NTYPES, "%d series claimed concurrently by %d processes: each N x M / %d",
	       NTYPES, NPROC, NTYPES);
	is_int(value_of(text, "billing_webhook_lag_seconds_bucket{le=\"1\"} "), 2,
	       "lag histogram: workers 0 and 1 in le=1");
	is_int(value_of(text, "billing_webhook_lag_seconds_bucket{le=\"5\"} "), 6,
	       "... 0 to 5 in le=5");
	is_int(value_of(text, "billing_webhook_lag_seconds_count "), NPROC, "... count N");
	is_int(value_of(text, "billing_webhook_lag_seconds_sum "), 28, "... sum 0+1+...+7");
	is_int(value_of(text, "billing_metrics_dropped_total "), 0, "nothing dropped");
	is_int(value_of(text, "billing_metrics_file_up "), 1, "file up");
	free(text);
}

static void
test_labels(void)
{
	char *text;

	metrics_webhook_event("Invoice.Paid!", "applied");
	metrics_webhook_event("invoice.paid", "bogus");
	metrics_usage_breach("pro", "export");
	metrics_usage_breach("", "export");
	metrics_usage_breach("pro", "a/b");
	metrics_rate_limited("usage", "address");
	metrics_rate_limited("usage", "caller");
	metrics_rate_limited("usage", "caller");
	metrics_request("usage", 99, 1);
	metrics_request("usage", 600, 1);
	text = render();
	if (text == NULL) {
		ok(0, "rendered");
		return;
	}
	is_int(value_of(text, "billing_webhook_events_total{type=\"other\",result=\"applied\"} "),
	       1, "a type outside [a-z0-9._] counts as other");
	is_int(value_of(text, "billing_webhook_events_total{type=\"invoice.paid\""), -1,
	       "an unknown result counts nothing");
	is_int(value_of(text,
			"billing_usage_quota_breaches_total{tier=\"pro\",usage_type=\"export\"} "),
	       1, "breach by tier and type");
	is_int(
	    value_of(text,
		     "billing_usage_quota_breaches_total{tier=\"unknown\",usage_type=\"export\"} "),
	    1, "an unknown tier is \"unknown\"");
	ok(strstr(text, "usage_type=\"a/b\"") == NULL && strstr(text, "usage_type=\"b\"") == NULL,
	   "a key with a slash is refused");
	is_int(value_of(text, "billing_rate_limited_total{endpoint=\"usage\",scope=\"address\"} "),
	       1, "rate limited per address");
	is_int(value_of(text, "billing_rate_limited_total{endpoint=\"usage\",scope=\"caller\"} "),
	       2, "rate limited per caller");
	is_int(value_of(text, "billing_http_requests_total{endpoint=\"usage\",code=\"2xx\"} "),
	       (long long)NPROC * M / 2, "statuses outside 100..599 count nothing");
	ok(strstr(text, "# TYPE billing_http_request_duration_seconds histogram\n") != NULL &&
	       strstr(text, "# HELP billing_webhook_lag_seconds ") != NULL,
	   "families have HELP and TYPE");
	free(text);
}

static void
test_full(void)
{
	char d2[] = "/tmp/test-metrics-full-XXXXXX", type[32], cmd[128], *text;
	int i;

	if (mkdtemp(d2) == NULL)
		exit(2);
	setenv("METRICS_DIR", d2, 1);
	for (i = 0; i < 300; i++) {
		snprintf(type, sizeof(type), "full.t%d", i);
		metrics_webhook_event(type, "applied");
	}
	text = render();
	ok(text && value_of(text, "billing_metrics_dropped_total ") == 300 - 256,
	   "300 series into 256 slots: 44 updates dropped and counted as such");
	free(text);
	metrics_reset();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d2);
	if (system(cmd) != 0)
		ok(0, "cleanup");
}

static void
test_foreign_file(void)
{
	char d3[] = "/tmp/test-metrics-foreign-XXXXXX", path[128], junk[100] = "not ours", *text;
	struct stat st;
	int fd;

	if (mkdtemp(d3) == NULL)
		exit(2);
	snprintf(path, sizeof(path), "%s/billing-metrics.v1", d3);
	fd = open(path, O_CREAT | O_WRONLY, 0600);
	if (fd == -1 || write(fd, junk, sizeof(junk)) != (ssize_t)sizeof(junk))
		exit(2);
	close(fd);
	setenv("METRICS_DIR", d3, 1);
	metrics_request("usage", 200, 1);
	text = render();
	ok(text && value_of(text, "billing_metrics_file_up ") == 0 &&
	       strstr(text, "endpoint=\"usage\"") == NULL,
	   "a file of another size: not used, nothing counted");
	ok(stat(path, &st) == 0 && st.st_size == sizeof(junk), "... and left as it was");
	free(text);
	unsetenv("METRICS_DIR");
	metrics_request("usage", 200, 1);
	text = render();
	ok(text && value_of(text, "billing_metrics_file_up ") == 0,
	   "without METRICS_DIR: counting off, still rendered");
	free(text);
	unlink(path);
	rmdir(d3);
}

int
main(void)
{
	char cmd[128];

	if (mkdtemp(dir) == NULL)
		return 2;
	setenv("METRICS_DIR", dir, 1);
	test_shared();
	test_labels();
	test_full();
	test_foreign_file();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		ok(0, "cleanup");
	return done_testing();
}
