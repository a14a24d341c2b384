#define _GNU_SOURCE	/* fallocate */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "limits.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"

/*
 * The file.  Its name carries the layout version: binaries of another
 * layout use another file instead of misreading this one.  All integers
 * are native-endian (the file never leaves its host).
 *
 *   header   64 bytes: magic "BILLMTRC", version, header size, slot count,
 *            slot size, creation time, updates dropped for want of a slot
 *   slots    SLOTS x 512 bytes: state (free, claiming, ready), kind, key
 *            (the series' label values, NUL-terminated), 56 counters
 *
 * A process claims a free slot for a new (kind, key) with a compare-and-
 * swap of its state, writes kind and key, and publishes it with a
 * release store; readers load the state with acquire.  Slots are found
 * by open addressing from a hash of (kind, key).  Two processes racing to
 * claim the same series can end up with two slots for it (one skips the
 * other's half-claimed slot rather than wait for it): rendering sums
 * slots with the same kind and key, so nothing is lost.  Counters are
 * 64-bit atomic adds on the shared mapping (lock-free on every platform
 * we build for, hence safe between processes).
 */
#define METRICS_FILE "billing-metrics.v1"
#define METRICS_MAGIC "BILLMTRC"
#define METRICS_VERSION 1
#define SLOTS 256
#define KEY_LEN 56
#define VALUES 56

struct file_header {
	char magic[8];
	uint32_t version;
	uint32_t header_size;
	uint32_t slot_count;
	uint32_t slot_size;
	uint64_t created;
	uint64_t dropped;
	uint8_t pad[24];
};

struct slot {
	uint32_t state;
	uint32_t kind;
	char key[KEY_LEN];
	uint64_t v[VALUES];
};

_Static_assert(sizeof(struct file_header) == 64, "header layout");
_Static_assert(sizeof(struct slot) == 512, "slot layout");

#define FILE_SIZE (sizeof(struct file_header) + SLOTS * sizeof(struct slot))

enum slot_state { SLOT_FREE = 0, SLOT_CLAIMING, SLOT_READY };

enum kind {
	KIND_ENDPOINT = 1,   /* key: endpoint name */
	KIND_WEBHOOK_EVENT,  /* key: event type */
	KIND_WEBHOOK_REJECT, /* key: outcome code */
	KIND_WEBHOOK_LAG,    /* key: "lag" */
	KIND_USAGE_BREACH,   /* key: "tier/usage_type" */
	KIND__MAX
};

/* Request durations (Prometheus' default buckets), microseconds. */
static const long long duration_le_us[] = {5000,   10000,   25000,   50000,   100000,  250000,
					   500000, 1000000, 2500000, 5000000, 10000000};
#define NDURATION (sizeof(duration_le_us) / sizeof(duration_le_us[0]))

/* Webhook lag, seconds: Stripe delivers in seconds and retries for up to 3 days. */
static const long long lag_le_s[] = {1, 5, 15, 30, 60, 300, 900, 3600, 21600, 86400, 259200};
#define NLAG (sizeof(lag_le_s) / sizeof(lag_le_s[0]))

/* Counters of an endpoint slot. */
enum {
	EP_CLASS = 0,		  /* 5: 1xx .. 5xx */
	EP_BUCKET = EP_CLASS + 5, /* NDURATION + 1 (+Inf), not cumulative */
	EP_SUM_US = EP_BUCKET + NDURATION + 1,
	EP_LIMITED = EP_SUM_US + 1, /* 2: caller, address */
	EP__END = EP_LIMITED + 2
};
/* Counters of the lag slot. */
enum { LAG_BUCKET = 0, LAG_SUM = LAG_BUCKET + NLAG + 1, LAG__END };

static const char *const webhook_results[] = {"applied", "duplicate", "ignored", "failed"};
#define NRESULTS (sizeof(webhook_results) / sizeof(webhook_results[0]))
static const char *const limit_scopes[] = {"caller", "address"};

_Static_assert(EP__END <= VALUES && LAG__END <= VALUES, "slot values");

/*
 * The mapping: process-wide (a FastCGI process keeps it for all its
 * requests), redone when METRICS_DIR changes, and when the file at its
 * path is no longer the one mapped (see replaced()).
 */
static struct {
	char *dir;  /* the METRICS_DIR mapped (or tried) */
	char *path; /* its file */
	int tried;
	struct file_header *hdr;
	struct slot *slots;
	dev_t dev; /* the file mapped */
	ino_t ino;
	time_t checked; /* when the path was last compared with it */
	int unusable; /* the file tried and not used, held open (see open_file): fd + 1, 0 none */
} map;

/* Lets go of the file mapped, or held. */
static void
unmap(void)
{
	if (map.hdr != NULL)
		munmap(map.hdr, FILE_SIZE);
	if (map.unusable > 0)
		close(map.unusable - 1);
	map.hdr = NULL;
	map.slots = NULL;
	map.unusable = 0;
}

void
metrics_reset(void)
{
	unmap();
	free(map.dir);
	free(map.path);
	memset(&map, 0, sizeof(map));
}

static void
header_init(struct file_header *h)
{
	memset(h, 0, sizeof(*h));
	memcpy(h->magic, METRICS_MAGIC, sizeof(h->magic));
	h->version = METRICS_VERSION;
	h->header_size = sizeof(struct file_header);
	h->slot_count = SLOTS;
	h->slot_size = sizeof(struct slot);
	h->created = (uint64_t)time(NULL);
}

/*
 * Creates the file whole under a temporary name (mkstemp: O_EXCL, mode
 * 0600), then gives it its name with link(), which, unlike rename(),
 * never replaces a file another process made meanwhile: the loser of
 * that race uses the winner's.  Nobody ever sees a partial file.
 *
 * Every byte is written, not left a hole by ftruncate: a store through
 * the mapping into a hole must find a free block at that moment, and on a
 * full file system the kernel answers it with SIGBUS, which killed the
 * process (a scrape, or a request after its database work) with no
 * answer.  Written now, the blocks are the file's for good.
 */
static int
create_file(const char *dir, const char *path)
{
	size_t n = strlen(dir) + sizeof("/." METRICS_FILE ".XXXXXX");
	char *tmp = mem_alloc(n);
	struct file_header *h = mem_calloc(1, FILE_SIZE);
	int fd, rc = -1, saved;

	snprintf(tmp, n, "%s/." METRICS_FILE ".XXXXXX", dir);
	if ((fd = mkstemp(tmp)) == -1) {
		saved = errno;
		goto out;
	}
	header_init(h);
	if (pwrite(fd, h, FILE_SIZE, 0) == (ssize_t)FILE_SIZE && fsync(fd) == 0 &&
	    (link(tmp, path) == 0 || errno == EEXIST))
		rc = 0;
	saved = errno;
	unlink(tmp);
	close(fd);
out:
	free(h);
	free(tmp);
	errno = saved;
	return rc;
}

/*
 * A file with holes (an older build made it with ftruncate, or it was
 * copied sparse) gets its blocks before it is mapped, for the reason
 * above.  fallocate(2) only allocates and never writes, so it is safe
 * while other processes count in the file; posix_fallocate is not: where
 * the file system lacks fallocate, glibc emulates it by writing bytes,
 * which could undo a concurrent add.  Without fallocate such a file is
 * not used.  0, or -1 with errno set.
 */
static int
allocate_holes(int fd, const struct stat *st)
{
	if ((unsigned long long)st->st_blocks * 512 >= FILE_SIZE)
		return 0;
#ifdef __linux__
	return fallocate(fd, 0, 0, (off_t)FILE_SIZE);
#else
	errno = EOPNOTSUPP;
	return -1;
#endif
}

/*
 * Maps map.path (made if missing), and notes which file it is for
 * replaced().  A file found unusable is held open until it is replaced:
 * freed, its inode number could be the very next file's, which would then
 * look like the one tried.  Heap buffers: every page a CGI touches costs
 * a fault.
 */
static int
open_file(void)
{
	struct file_header *h;
	struct stat st;
	void *p;
	int fd, rc = -1;

	map.dev = 0;
	map.ino = 0;
	fd = open(map.path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (fd == -1 && errno == ENOENT && create_file(map.dir, map.path) == 0)
		fd = open(map.path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (fd == -1) {
		log_msg("metrics file in METRICS_DIR unusable: %s", strerror(errno));
		if (stat(map.path, &st) == 0) {
			map.dev = st.st_dev;
			map.ino = st.st_ino;
		}
		return -1;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode) || (size_t)st.st_size != FILE_SIZE) {
		log_msg("metrics file in METRICS_DIR is not a %zu-byte file", (size_t)FILE_SIZE);
		goto out;
	}
	map.dev = st.st_dev;
	map.ino = st.st_ino;
	if (allocate_holes(fd, &st) == -1) {
		log_msg("metrics file in METRICS_DIR cannot be given its blocks: %s", strerror(errno));
		goto out;
	}
	p = mmap(NULL, FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		log_msg("metrics file cannot be mapped: %s", strerror(errno));
		goto out;
	}
	h = p;
	if (memcmp(h->magic, METRICS_MAGIC, 8) != 0 || h->version != METRICS_VERSION ||
	    h->header_size != sizeof(struct file_header) || h->slot_count != SLOTS ||
	    h->slot_size != sizeof(struct slot)) {
		log_msg("metrics file in METRICS_DIR has another layout");
		munmap(p, FILE_SIZE);
		goto out;
	}
	map.hdr = h;
	map.slots = (struct slot *)((char *)p + sizeof(struct file_header));
	rc = 0;
out:
	if (rc == 0)
		close(fd);
	else
		map.unusable = fd + 1;
	return rc;
}

/*
 * Whether the file at map.path is no longer the one mapped, or tried:
 * deleted (the operator's way to reset the counts) or replaced.  A
 * FastCGI process maps the file once; without this it went on counting
 * into the deleted file, its updates lost, and a /metrics process kept
 * serving the old counts while new processes counted in a new file.  A
 * process that found no usable file (another layout, a full disk) takes
 * the next file at the path; one that is not there is not made again
 * (another process makes it), so a failure is logged once per file, not
 * once a second.  One stat a second at most (time() is a vDSO read): an
 * update stays a few ns.
 */
static int
replaced(void)
{
	struct stat st;
	time_t now = time(NULL);

	if (now == map.checked)
		return 0;
	map.checked = now;
	if (stat(map.path, &st) == -1)
		return map.hdr != NULL;
	return st.st_dev != map.dev || st.st_ino != map.ino;
}

/* The mapped file, or NULL when counting is off. */
static struct file_header *
mapped(void)
{
	const char *dir = config_get("METRICS_DIR");

	if (dir == NULL || strlen(dir) > LIMIT_PATH) {
		if (map.tried)
			metrics_reset();
		return NULL;
	}
	if (map.tried && strcmp(map.dir, dir) == 0) {
		if (!replaced())
			return map.hdr;
		unmap();
	} else {
		metrics_reset();
		map.tried = 1;
		map.dir = mem_strdup(dir);
		map.path = mem_alloc(strlen(dir) + sizeof("/" METRICS_FILE));
		snprintf(map.path, strlen(dir) + sizeof("/" METRICS_FILE), "%s/" METRICS_FILE, dir);
	}
	map.checked = time(NULL);
	(void)open_file();
	return map.hdr;
}

/* Label values we store: [a-z0-9._/-], 1..KEY_LEN-1 bytes. */
static int
key_valid(const char *key)
{
	size_t n;

	for (n = 0; key[n] != '\0'; n++) {
		char c = key[n];

		if (n >= KEY_LEN - 1 || !((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
					  c == '.' || c == '_' || c == '/' || c == '-'))
			return 0;
	}
	return n > 0;
}

static uint32_t
hash(enum kind kind, const char *key)
{
	uint32_t h = 2166136261u ^ (uint32_t)kind; /* FNV-1a */

	for (; *key != '\0'; key++)
		h = (h ^ (unsigned char)*key) * 16777619u;
	return h;
}

static struct slot *
slot_for(enum kind kind, const char *key)
{
	struct file_header *hdr = mapped();
	uint32_t h, i, state, expect;
	struct slot *s;

	if (hdr == NULL || !key_valid(key))
		return NULL;
	h = hash(kind, key);
	for (i = 0; i < SLOTS; i++) {
		s = &map.slots[(h + i) % SLOTS];
		state = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE);
		if (state == SLOT_FREE) {
			expect = SLOT_FREE;
			if (__atomic_compare_exchange_n(&s->state, &expect, SLOT_CLAIMING, 0,
							__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
				s->kind = kind;
				strcpy(s->key, key);
				__atomic_store_n(&s->state, SLOT_READY, __ATOMIC_RELEASE);
				return s;
			}
			state = expect;
		}
		if (state == SLOT_READY && s->kind == (uint32_t)kind && strcmp(s->key, key) == 0)
			return s;
	}
	__atomic_fetch_add(&hdr->dropped, 1, __ATOMIC_RELAXED);
	return NULL;
}

static void
add(struct slot *s, int i, uint64_t n)
{
	if (s != NULL)
		__atomic_fetch_add(&s->v[i], n, __ATOMIC_RELAXED);
}

void
metrics_request(const char *endpoint, int status, long long duration_us)
{
	struct slot *s;
	size_t b;

	if (status < 100 || status > 599 || (s = slot_for(KIND_ENDPOINT, endpoint)) == NULL)
		return;
	if (duration_us < 0)
		duration_us = 0;
	for (b = 0; b < NDURATION && duration_us > duration_le_us[b]; b++)
		;
	add(s, EP_CLASS + status / 100 - 1, 1);
	add(s, EP_BUCKET + (int)b, 1);
	add(s, EP_SUM_US, (uint64_t)duration_us);
}

void
metrics_rate_limited(const char *endpoint, const char *scope)
{
	add(slot_for(KIND_ENDPOINT, endpoint), EP_LIMITED + (strcmp(scope, "address") == 0), 1);
}

void
metrics_webhook_event(const char *type, const char *result)
{
	size_t r;

	for (r = 0; r < NRESULTS && strcmp(result, webhook_results[r]) != 0; r++)
		;
	if (r == NRESULTS)
		return;
	add(slot_for(KIND_WEBHOOK_EVENT,
		     type && key_valid(type) && !strchr(type, '/') ? type : "other"),
	    (int)r, 1);
}

void
metrics_webhook_rejected(const char *reason)
{
	add(slot_for(KIND_WEBHOOK_REJECT, reason), 0, 1);
}

void
metrics_webhook_lag(long long seconds)
{
	struct slot *s = slot_for(KIND_WEBHOOK_LAG, "lag");
	size_t b;

	if (seconds < 0)
		seconds = 0; /* clock skew: our clock behind Stripe's */
	for (b = 0; b < NLAG && seconds > lag_le_s[b]; b++)
		;
	add(s, LAG_BUCKET + (int)b, 1);
	add(s, LAG_SUM, (uint64_t)seconds);
}

void
metrics_usage_breach(const char *tier, const char *usage_type)
{
	char key[KEY_LEN];

	if (tier == NULL || *tier == '\0')
		tier = "unknown";
	if (usage_type == NULL || strchr(tier, '/') || strchr(usage_type, '/') ||
	    snprintf(key, sizeof(key), "%s/%s", tier, usage_type) >= (int)sizeof(key))
		return;
	add(slot_for(KIND_USAGE_BREACH, key), 0, 1);
}

/* --- rendering ------------------------------------------------------------------------- */

/* One series: the sum of every slot with its kind and key. */
struct series {
	char key[KEY_LEN];
	uint64_t v[VALUES];
};

static int
series_cmp(const void *a, const void *b)
{
	return strcmp(((const struct series *)a)->key, ((const struct series *)b)->key);
}

/* The series of one kind, sorted by key: *n of them in a block the caller frees. */
static struct series *
collect(enum kind kind, size_t *n)
{
	struct series *out = mem_calloc(SLOTS, sizeof(*out));
	struct slot *s;
	size_t i, j, k;

	*n = 0;
	for (i = 0; map.hdr != NULL && i < SLOTS; i++) {
		s = &map.slots[i];
		/*
		 * Only keys slot_for could have written: a slot damaged on disk
		 * or by another program must not put bytes into a label that
		 * make the whole answer unparsable (Prometheus rejects a scrape
		 * at the first invalid UTF-8 or control byte).
		 */
		if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) != SLOT_READY ||
		    s->kind != (uint32_t)kind || memchr(s->key, '\0', KEY_LEN) == NULL ||
		    !key_valid(s->key))
			continue;
		for (j = 0; j < *n && strcmp(out[j].key, s->key) != 0; j++)
			;
		if (j == *n) {
			strcpy(out[j].key, s->key);
			(*n)++;
		}
		for (k = 0; k < VALUES; k++)
			out[j].v[k] += __atomic_load_n(&s->v[k], __ATOMIC_RELAXED);
	}
	qsort(out, *n, sizeof(*out), series_cmp);
	return out;
}

/* A label value in the text format: backslash, double quote and newline escaped. */
static int
label(struct buf *out, const char *name, const char *value, size_t len, int first)
{
	size_t i;
	int rc = buf_printf(out, "%s%s=\"", first ? "" : ",", name);

	for (i = 0; rc == 0 && i < len; i++) {
		if (value[i] == '\\' || value[i] == '"')
			rc = buf_addch(out, '\\') || buf_addch(out, value[i]);
		else if (value[i] == '\n')
			rc = buf_addstr(out, "\\n");
		else
			rc = buf_addch(out, value[i]);
	}
	return rc == 0 ? buf_addch(out, '"') : -1;
}

static int
family(struct buf *out, const char *name, const char *type, const char *help)
{
	return buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{<labels>} value, labels given as already-rendered text (may be ""). */
static int
sample(struct buf *out, const char *name, const char *labels, unsigned long long v)
{
	return buf_printf(out, "%s%s%s%s %llu\n", name, *labels ? "{" : "", labels,
			  *labels ? "}" : "", v);
}

/* Cumulative buckets, _sum and _count of one histogram series. */
static int
histogram(struct buf *out, const char *name, const char *labels, const uint64_t *buckets,
	  const long long *le, size_t nle, double le_scale, double sum)
{
	struct buf l = BUF_INIT(512);
	unsigned long long cum = 0;
	size_t b;
	int rc = 0;

	for (b = 0; rc == 0 && b <= nle; b++) {
		cum += buckets[b];
		buf_reset(&l);
		if (b < nle)
			rc = buf_printf(&l, "%s%sle=\"%g\"", labels, *labels ? "," : "",
					(double)le[b] * le_scale);
		else
			rc = buf_printf(&l, "%s%sle=\"+Inf\"", labels, *labels ? "," : "");
		rc = rc || buf_printf(out, "%s_bucket{%s} %llu\n", name, buf_str(&l), cum);
	}
	rc = rc || buf_printf(out, "%s_sum%s%s%s %.6f\n", name, *labels ? "{" : "", labels,
			      *labels ? "}" : "", sum);
	rc = rc || buf_printf(out, "%s_count%s%s%s %llu\n", name, *labels ? "{" : "", labels,
			      *labels ? "}" : "", cum);
	buf_free(&l);
	return rc ? -1 : 0;
}

static int
render_endpoints(struct buf *out)
{
	static const char *const classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
	struct buf l = BUF_INIT(512);
	struct series *s;
	size_t n, i, c;
	int rc;

	s = collect(KIND_ENDPOINT, &n);
	rc = family(out, "billing_http_requests_total", "counter",
		    "Requests answered, by endpoint and status class.");
	for (i = 0; rc == 0 && i < n; i++)
		for (c = 0; rc == 0 && c < 5; c++) {
			buf_reset(&l);
			rc = label(&l, "endpoint", s[i].key, strlen(s[i].key), 1) ||
			     label(&l, "code", classes[c], 3, 0) ||
			     sample(out, "billing_http_requests_total", buf_str(&l),
				    s[i].v[EP_CLASS + c]);
		}
	rc = rc || family(out, "billing_http_request_duration_seconds", "histogram",
			  "Time from the start of a request to its answer, by endpoint.");
	for (i = 0; rc == 0 && i < n; i++) {
		buf_reset(&l);
		rc = label(&l, "endpoint", s[i].key, strlen(s[i].key), 1) ||
		     histogram(out, "billing_http_request_duration_seconds", buf_str(&l),
			       &s[i].v[EP_BUCKET], duration_le_us, NDURATION, 1e-6,
			       (double)s[i].v[EP_SUM_US] / 1e6);
	}
	rc = rc || family(out, "billing_rate_limited_total", "counter",
			  "Requests refused with 429, by endpoint and limit (per caller or per "
			  "client address).");
	for (i = 0; rc == 0 && i < n; i++)
		for (c = 0; rc == 0 && c < 2; c++) {
			buf_reset(&l);
			rc = label(&l, "endpoint", s[i].key, strlen(s[i].key), 1) ||
			     label(&l, "scope", limit_scopes[c], strlen(limit_scopes[c]), 0) ||
			     sample(out, "billing_rate_limited_total", buf_str(&l),
				    s[i].v[EP_LIMITED + c]);
		}
	free(s);
	buf_free(&l);
	return rc ? -1 : 0;
}

static int
render_webhook(struct buf *out)
{
	static const uint64_t zero[VALUES];
	struct buf l = BUF_INIT(512);
	struct series *s;
	size_t n, i, r;
	int rc;

	s = collect(KIND_WEBHOOK_EVENT, &n);
	rc = family(
	    out, "billing_webhook_events_total", "counter",
	    "Verified webhook events, by type and result (failed: not stored, Stripe redelivers).");
	for (i = 0; rc == 0 && i < n; i++)
		for (r = 0; rc == 0 && r < NRESULTS; r++) {
			buf_reset(&l);
			rc = label(&l, "type", s[i].key, strlen(s[i].key), 1) ||
			     label(&l, "result", webhook_results[r], strlen(webhook_results[r]),
				   0) ||
			     sample(out, "billing_webhook_events_total", buf_str(&l), s[i].v[r]);
		}
	free(s);
	s = collect(KIND_WEBHOOK_REJECT, &n);
	rc = rc ||
	     family(
		 out, "billing_webhook_rejected_total", "counter",
		 "Webhook deliveries refused before they were events, by reason (the error code).");
	for (i = 0; rc == 0 && i < n; i++) {
		buf_reset(&l);
		rc = label(&l, "reason", s[i].key, strlen(s[i].key), 1) ||
		     sample(out, "billing_webhook_rejected_total", buf_str(&l), s[i].v[0]);
	}
	free(s);
	s = collect(KIND_WEBHOOK_LAG, &n);
	rc = rc || family(out, "billing_webhook_lag_seconds", "histogram",
			  "Time from an event's creation at Stripe to its delivery here.");
	rc = rc || histogram(out, "billing_webhook_lag_seconds", "", n ? &s[0].v[LAG_BUCKET] : zero,
			     lag_le_s, NLAG, 1, n ? (double)s[0].v[LAG_SUM] : 0);
	free(s);
	buf_free(&l);
	return rc ? -1 : 0;
}

static int
render_breaches(struct buf *out)
{
	struct buf l = BUF_INIT(512);
	struct series *s;
	const char *slash;
	size_t n, i;
	int rc;

	s = collect(KIND_USAGE_BREACH, &n);
	rc = family(
	    out, "billing_usage_quota_breaches_total", "counter",
	    "Usage POSTs refused with 402 quota_exceeded, by effective tier and usage type.");
	for (i = 0; rc == 0 && i < n; i++) {
		if ((slash = strchr(s[i].key, '/')) == NULL)
			continue;
		buf_reset(&l);
		rc = label(&l, "tier", s[i].key, (size_t)(slash - s[i].key), 1) ||
		     label(&l, "usage_type", slash + 1, strlen(slash + 1), 0) ||
		     sample(out, "billing_usage_quota_breaches_total", buf_str(&l), s[i].v[0]);
	}
	free(s);
	buf_free(&l);
	return rc ? -1 : 0;
}

int
metrics_render_counters(struct buf *out)
{
	struct file_header *hdr = mapped();
	int rc;

	rc = render_endpoints(out) || render_webhook(out) || render_breaches(out) ||
	     family(out, "billing_metrics_dropped_total", "counter",
		    "Counter updates lost because every slot of the metrics file was taken.") ||
	     (hdr && sample(out, "billing_metrics_dropped_total", "",
			    __atomic_load_n(&hdr->dropped, __ATOMIC_RELAXED))) ||
	     family(out, "billing_metrics_file_up", "gauge",
		    "1 when this host's counter file (METRICS_DIR) is in use.") ||
	     sample(out, "billing_metrics_file_up", "", hdr != NULL);
	return rc ? -1 : 0;
}

/* --- business gauges -------------------------------------------------------------------- */

/* What metrics_gauges() returns, in the order rendered; label names per metric. */
static const struct {
	const char *metric; /* metrics_gauges().metric */
	const char *name;
	const char *label1, *label2;
	const char *help;
} gauges[] = {
    {"subscriptions", "billing_subscriptions", "tier", "status",
     "Subscriptions by tier and Stripe status."},
    {"trials", "billing_trials", "tier", NULL,
     "Subscriptions in their trial (status trialing), by tier."},
    {"mrr", "billing_mrr_minor_units", "currency", NULL,
     "Monthly recurring revenue in the currency's minor units: active and past_due "
     "subscriptions, yearly ones divided by 12."},
    {"notifications", "billing_notifications", "status", NULL,
     "Notifications not sent: pending (still to send) and failed (given up)."},
    {"notification_oldest_pending_age", "billing_notification_oldest_pending_age_seconds", NULL,
     NULL, "Age of the oldest notification still to be sent; 0 when none."},
};

/* A float8 as PostgreSQL prints it, which the text format accepts as it is. */
static int
number_valid(const char *s)
{
	if (s == NULL || *s == '\0')
		return 0;
	for (; *s != '\0'; s++)
		if (!strchr("0123456789.eE+-", *s))
			return 0;
	return 1;
}

int
metrics_render_business(struct db *db, struct buf *out)
{
	struct db_rows *rows = NULL;
	struct buf l = BUF_INIT(512);
	const char *v1, *v2, *value;
	size_t g;
	int i, n, rc = 0, up;

	up = db != NULL && db_exec(db, &rows,
				   "SELECT metric, label1, label2, value::text "
				   "FROM metrics_gauges()",
				   0, NULL) == DB_OK;
	if (db != NULL && !up)
		log_msg("metrics_gauges() failed");
	n = up ? db_rows_count(rows) : 0;
	for (g = 0; rc == 0 && g < sizeof(gauges) / sizeof(gauges[0]); g++) {
		rc = family(out, gauges[g].name, "gauge", gauges[g].help);
		for (i = 0; rc == 0 && i < n; i++) {
			if (strcmp(db_rows_get(rows, i, 0), gauges[g].metric) != 0)
				continue;
			v1 = db_rows_get(rows, i, 1);
			v2 = db_rows_get(rows, i, 2);
			value = db_rows_get(rows, i, 3);
			if (!number_valid(value) || (gauges[g].label1 && v1 == NULL) ||
			    (gauges[g].label2 && v2 == NULL))
				continue;
			buf_reset(&l);
			rc = (gauges[g].label1 && label(&l, gauges[g].label1, v1, strlen(v1), 1)) ||
			     (gauges[g].label2 && label(&l, gauges[g].label2, v2, strlen(v2), 0)) ||
			     buf_printf(out, "%s%s%s%s %s\n", gauges[g].name, l.len ? "{" : "",
					buf_str(&l), l.len ? "}" : "", value);
		}
	}
	rc = rc ||
	     family(out, "billing_database_up", "gauge",
		    "1 when the business figures could be read from PostgreSQL for this scrape.") ||
	     sample(out, "billing_database_up", "", up);
	db_rows_free(rows);
	buf_free(&l);
	return rc ? -1 : 0;
}
