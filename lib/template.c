#define _GNU_SOURCE	/* memmem */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "html.h"
#include "jsonget.h"
#include "limits.h"
#include "mem.h"
#include "template.h"


/* A template is literal text and placeholders, alternating. */
struct segment {
	const char *text;	/* into template.src; NULL for a placeholder */
	size_t len;
	size_t index;		/* placeholder index */
};

struct template {
	char *src;
	struct segment *segs;
	size_t nsegs;
	const char *const *names;	/* the caller's, for messages */
	size_t nnames;
	unsigned char *used;	/* nnames flags */
};

static void
add_segment(struct template *t, const char *text, size_t len, size_t index)
{
	t->segs = mem_realloc(t->segs, (t->nsegs + 1) * sizeof(*t->segs));
	t->segs[t->nsegs].text = text;
	t->segs[t->nsegs].len = len;
	t->segs[t->nsegs].index = index;
	t->nsegs++;
}

static size_t
line_of(const char *start, const char *p)
{
	size_t line = 1;

	for (; start < p; start++)
		line += *start == '\n';
	return line;
}

static int
name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

/* Parses "{{ name }}" at p: the name's bounds and the end; -1 when malformed. */
static int
placeholder_at(const char *p, const char *end, const char **ns, size_t *nl, const char **after)
{
	const char *q = p + 2;

	while (q < end && *q == ' ')
		q++;
	*ns = q;
	while (q < end && name_char(*q))
		q++;
	*nl = (size_t)(q - *ns);
	while (q < end && *q == ' ')
		q++;
	if (*nl == 0 || *nl > LIMIT_TEMPLATE_NAME_LEN || end - q < 2 || q[0] != '}' || q[1] != '}')
		return -1;
	*after = q + 2;
	return 0;
}

/* Valid UTF-8 whose only control characters are tabs and line breaks. */
static int
text_valid(const char *s, size_t len)
{
	size_t i = 0, run;

	while (i < len) {
		/* Within len: the text need not be NUL-terminated. */
		for (run = 0; run < len - i && s[i + run] != '\t' && s[i + run] != '\r' &&
		    s[i + run] != '\n'; run++)
			;
		if (!jsonget_clean_utf8(s + i, run))
			return 0;
		i += run + 1;
	}
	return 1;
}

int
template_parse(const char *text, size_t len, const char *const *names, size_t n,
    struct template **out, char *err, size_t errlen)
{
	struct template *t = NULL;
	const char *p, *end, *lit, *ns, *after;
	size_t nl, i;

	*out = NULL;
	if (memchr(text, '\0', len) != NULL || !text_valid(text, len)) {
		snprintf(err, errlen, "is not UTF-8 text (or holds control characters)");
		return -1;
	}
	t = mem_calloc(1, sizeof(*t));
	t->src = mem_strndup(text, len);
	t->names = names;
	t->nnames = n;
	t->used = mem_calloc(n ? n : 1, 1);
	p = lit = t->src;
	end = t->src + len;
	while ((p = memmem(p, (size_t)(end - p), "{{", 2)) != NULL) {
		if (placeholder_at(p, end, &ns, &nl, &after) == -1) {
			snprintf(err, errlen, "line %zu: \"{{\" that is not a {{name}} placeholder",
			    line_of(t->src, p));
			goto bad;
		}
		for (i = 0; i < n; i++)
			if (names[i] && strlen(names[i]) == nl && memcmp(names[i], ns, nl) == 0)
				break;
		if (i == n) {
			snprintf(err, errlen, "line %zu: unknown placeholder {{%.*s}}",
			    line_of(t->src, p), (int)nl, ns);
			goto bad;
		}
		if (p > lit)
			add_segment(t, lit, (size_t)(p - lit), 0);
		add_segment(t, NULL, 0, i);
		t->used[i] = 1;
		p = lit = after;
	}
	if (end > lit)
		add_segment(t, lit, (size_t)(end - lit), 0);
	*out = t;
	return 0;
bad:
	template_free(t);
	return -1;
}

int
template_load(const char *path, const char *const *names, size_t n, struct template **t,
    char *err, size_t errlen)
{
	struct buf content = BUF_INIT(LIMIT_MAIL_TEMPLATE);
	char chunk[4096];
	FILE *f = NULL;
	size_t got;
	int r = -1;

	*t = NULL;
	if ((f = fopen(path, "r")) == NULL) {
		snprintf(err, errlen, "cannot be opened: %s", strerror(errno));
		goto out;
	}
	while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0)
		if (buf_add(&content, chunk, got) == -1) {
			snprintf(err, errlen, "is larger than %d bytes", LIMIT_MAIL_TEMPLATE);
			goto out;
		}
	if (ferror(f)) {
		snprintf(err, errlen, "cannot be read");
		goto out;
	}
	r = template_parse(buf_str(&content), content.len, names, n, t, err, errlen);
out:
	if (f)
		fclose(f);
	buf_free(&content);
	return r;
}

int
template_uses(const struct template *t, size_t i)
{
	return i < t->nnames && t->used[i];
}

int
template_url_ok(const char *s, int https_only)
{
	const char *p;

	if (s == NULL || strlen(s) > LIMIT_MAIL_VALUE || (strncmp(s, "https://", 8) != 0 &&
	    (https_only || strncmp(s, "http://", 7) != 0)))
		return 0;
	for (p = s; *p; p++)
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || strchr("\"'<>\\", *p))
			return 0;
	return 1;
}

int
template_html_escape(struct buf *out, const char *s)
{
	/* One escaping for mails and console pages (html.h). */
	return html_escape(out, s);
}

static int
add_value(struct buf *out, const char *v, enum template_escape esc)
{
	char *flat = mem_strdup(v), *p;
	int r;

	for (p = flat; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = ' ';
	r = esc == TEMPLATE_HTML ? template_html_escape(out, flat) : buf_addstr(out, flat);
	free(flat);
	return r;
}

int
template_render(const struct template *t, const char *const *values, enum template_escape esc,
    struct buf *out, const char **missing)
{
	const struct segment *s;
	size_t i;

	*missing = NULL;
	for (i = 0; i < t->nsegs; i++) {
		s = &t->segs[i];
		if (s->text) {
			if (buf_add(out, s->text, s->len) == -1)
				return -2;
			continue;
		}
		if (values[s->index] == NULL) {
			*missing = t->names[s->index];
			return -1;
		}
		if (add_value(out, values[s->index], esc) == -1)
			return -2;
	}
	return 0;
}

void
template_free(struct template *t)
{
	if (t == NULL)
		return;
	free(t->src);
	free(t->segs);
	free(t->used);
	free(t);
}
