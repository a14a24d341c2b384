#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "config.h"
#include "limits.h"
#include "log.h"
#include "mem.h"
#include "request.h"

struct entry {
	char *key;
	char *value;
};

/*
 * The settings file, read once per process and kept: a FastCGI process
 * picks up a changed file when the process manager restarts it.
 */
static struct entry entries[LIMIT_CONFIG_ENTRIES];
static size_t nentries;
static int loaded;
static char *loaded_path;	/* the BILLING_CONFIG the entries came from, or NULL */

/*
 * A setting from the variables the server gives the request (SetEnv
 * arrives there under CGI and FastCGI alike), else from the process
 * environment (FcgidInitialEnv).  Clients only control HTTP_* variables
 * and the request line ones, and no setting is named like those.
 */
static const char *
env_setting(const char *name)
{
	const char *v = request_env(name);

	return v != NULL ? v : getenv(name);
}

void
config_reset(void)
{
	size_t i;

	for (i = 0; i < nentries; i++) {
		free(entries[i].key);
		mem_free_secret(entries[i].value, strlen(entries[i].value));
	}
	nentries = 0;
	loaded = 0;
	free(loaded_path);
	loaded_path = NULL;
}

static int
valid_key(const char *s, size_t n)
{
	size_t i;

	if (n == 0)
		return 0;
	for (i = 0; i < n; i++)
		if (!(isupper((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '_'))
			return 0;
	return 1;
}

static void
trim(const char **s, const char **e)
{
	while (*s < *e && (**s == ' ' || **s == '\t'))
		(*s)++;
	while (*e > *s && ((*e)[-1] == ' ' || (*e)[-1] == '\t' || (*e)[-1] == '\r'))
		(*e)--;
}

static int
blank(char c)
{
	return c == ' ' || c == '\t';
}

/*
 * The value after "=" in [*vs, *ve), narrowed to what is kept.  Quoted
 * ("..." or '...'): everything up to the same quote, as it is (no
 * escapes); after it only blanks and a comment.  Unquoted: up to a "#"
 * that follows a blank, trimmed.  -1 for an unterminated quote or text
 * after the closing one.
 */
static int
parse_value(const char **vs, const char **ve)
{
	const char *s = *vs, *e = *ve, *q, *p;

	while (s < e && blank(*s))
		s++;
	if (s < e && (*s == '"' || *s == '\'')) {
		if ((q = memchr(s + 1, *s, (size_t)(e - s - 1))) == NULL)
			return -1;
		for (p = q + 1; p < e && (blank(*p) || *p == '\r'); p++)
			;
		if (p < e && (*p != '#' || p == q + 1))
			return -1;
		*vs = s + 1;
		*ve = q;
		return 0;
	}
	/* s > the "=", so s[-1] exists: "KEY= # note" is an empty value. */
	for (p = s; p < e; p++)
		if (*p == '#' && blank(p[-1])) {
			e = p;
			break;
		}
	*vs = s;
	*ve = e;
	trim(vs, ve);
	return 0;
}

enum line_result {
	LINE_OK,
	LINE_MALFORMED,
	LINE_BAD_QUOTES,
	LINE_TOO_MANY,
};

/*
 * One line of the file: blank, a comment ("#" first on the line), or
 * [export] KEY=VALUE [# comment]; see parse_value for VALUE.
 */
static enum line_result
parse_line(const char *line, const char *end)
{
	const char *eq, *ks, *ke, *vs, *ve;
	size_t i;

	ks = line;
	ke = end;
	trim(&ks, &ke);
	if (ks == ke || *ks == '#')
		return LINE_OK;
	if ((eq = memchr(ks, '=', (size_t)(ke - ks))) == NULL)
		return LINE_MALFORMED;
	ke = eq;
	trim(&ks, &ke);
	if (ke - ks > 7 && strncmp(ks, "export", 6) == 0 && blank(ks[6])) {
		ks += 7;
		trim(&ks, &ke);
	}
	if (!valid_key(ks, (size_t)(ke - ks)))
		return LINE_MALFORMED;
	vs = eq + 1;
	ve = end;
	if (parse_value(&vs, &ve) == -1)
		return LINE_BAD_QUOTES;
	for (i = 0; vs + i < ve; i++)
		if ((unsigned char)vs[i] < 0x20 && vs[i] != '\t')
			return LINE_MALFORMED;
	if (nentries == LIMIT_CONFIG_ENTRIES)
		return LINE_TOO_MANY;
	entries[nentries].key = mem_strndup(ks, (size_t)(ke - ks));
	entries[nentries].value = mem_strndup(vs, (size_t)(ve - vs));
	nentries++;
	return LINE_OK;
}

/* Names the line and the problem, never the line's text (it may hold a secret). */
static void
log_line_problem(enum line_result r, size_t lineno)
{
	static const char prefix[] = "settings file named by BILLING_CONFIG: line";

	if (r == LINE_TOO_MANY)
		log_msg("%s %zu: too many entries (max %d)", prefix, lineno, LIMIT_CONFIG_ENTRIES);
	else if (r == LINE_BAD_QUOTES)
		log_msg("%s %zu has an unterminated quote or text after the closing quote", prefix,
			lineno);
	else
		log_msg("%s %zu is not KEY=VALUE", prefix, lineno);
}

enum outcome
config_load(void)
{
	const char *path;
	FILE *f = NULL;
	struct buf content = BUF_INIT(LIMIT_CONFIG_FILE);
	char chunk[4096];
	size_t n, lineno = 0;
	const char *p, *end, *nl;
	enum line_result r;
	enum outcome rc = OUT_MISCONFIGURED;

	path = env_setting("BILLING_CONFIG");
	if (path != NULL && *path == '\0')
		path = NULL;
	if (loaded && (path == NULL ? loaded_path == NULL
				    : loaded_path != NULL && strcmp(path, loaded_path) == 0))
		return OUT_OK;
	config_reset();
	if (path == NULL) {
		loaded = 1;
		return OUT_OK;
	}
	if ((f = fopen(path, "r")) == NULL) {
		log_msg("settings file named by BILLING_CONFIG cannot be opened (errno %d)", errno);
		goto out;
	}
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
		if (buf_add(&content, chunk, n) == -1) {
			log_msg("settings file named by BILLING_CONFIG is larger than %d bytes",
			    LIMIT_CONFIG_FILE);
			goto out;
		}
	}
	if (ferror(f)) {
		log_msg("settings file named by BILLING_CONFIG cannot be read");
		goto out;
	}
	p = buf_str(&content);
	end = p + content.len;
	if (memchr(p, '\0', content.len) != NULL) {
		log_msg("settings file named by BILLING_CONFIG contains a NUL byte");
		goto out;
	}
	while (p < end) {
		lineno++;
		nl = memchr(p, '\n', (size_t)(end - p));
		if (nl == NULL)
			nl = end;
		if ((r = parse_line(p, nl)) != LINE_OK) {
			log_line_problem(r, lineno);
			config_reset();
			goto out;
		}
		p = nl + 1;
	}
	loaded = 1;
	loaded_path = mem_strdup(path);
	rc = OUT_OK;
out:
	if (f)
		fclose(f);
	buf_free_secret(&content);
	return rc;
}

const char *
config_get(const char *name)
{
	const char *v;
	size_t i;

	v = env_setting(name);
	if (v != NULL && *v != '\0')
		return v;
	/* Last assignment in the file wins, like a shell sourcing it. */
	for (i = nentries; i > 0; i--)
		if (strcmp(entries[i - 1].key, name) == 0)
			return *entries[i - 1].value ? entries[i - 1].value : NULL;
	return NULL;
}

const char *
config_get_default(const char *name, const char *def)
{
	const char *v = config_get(name);

	return v ? v : def;
}

enum outcome
config_require(const char *name, const char **value)
{
	*value = config_get(name);
	if (*value == NULL) {
		log_msg("required setting %s is not set", name);
		return OUT_MISCONFIGURED;
	}
	return OUT_OK;
}

enum outcome
config_get_long(const char *name, long def, long min, long max, long *value)
{
	const char *v = config_get(name);
	char *end;
	long n;

	if (v == NULL) {
		*value = def;
		return OUT_OK;
	}
	errno = 0;
	n = strtol(v, &end, 10);
	if (errno != 0 || end == v || *end != '\0' || !isdigit((unsigned char)v[v[0] == '-']) ||
	    n < min || n > max) {
		log_msg("setting %s is not a whole number in [%ld, %ld]", name, min, max);
		return OUT_MISCONFIGURED;
	}
	*value = n;
	return OUT_OK;
}

enum outcome
config_get_bool(const char *name, int def, int *value)
{
	const char *v = config_get(name);

	if (v == NULL)
		*value = def;
	else if (strcmp(v, "true") == 0)
		*value = 1;
	else if (strcmp(v, "false") == 0)
		*value = 0;
	else {
		log_msg("setting %s must be true or false", name);
		return OUT_MISCONFIGURED;
	}
	return OUT_OK;
}

int
config_list_next(const char **cursor, const char **item, size_t *len)
{
	const char *s, *e, *comma;

	while (*cursor != NULL) {
		s = *cursor;
		comma = strchr(s, ',');
		e = comma ? comma : s + strlen(s);
		*cursor = comma ? comma + 1 : NULL;
		trim(&s, &e);
		if (e > s) {
			*item = s;
			*len = (size_t)(e - s);
			return 1;
		}
	}
	return 0;
}

int
config_list_contains(const char *name, const char *item, size_t len, int nocase)
{
	const char *cursor = config_get(name), *s;
	size_t n;

	while (config_list_next(&cursor, &s, &n))
		if (n == len && (nocase ? strncasecmp(s, item, len) : strncmp(s, item, len)) == 0)
			return 1;
	return 0;
}
