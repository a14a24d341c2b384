#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "jsonb.h"
#include "limits.h"
#include "mem.h"
#include "response.h"

/* Where the scanner is: one frame per open object or array. */
struct frame {
	char kind;		/* '{' or '[' */
	int expect_key;		/* object: the next string is a member name */
	long index;		/* array: index of the current element */
	char key[LIMIT_JSONB_PATH_KEY_LEN + 1];	/* object: the current member name */
};

struct scan {
	const char *in;
	size_t len, pos;
	char *out;
	size_t out_len;
	struct frame frames[LIMIT_JSON_DEPTH + 1];
	int depth;
	struct jsonb_fit *fit;
};

static int
hex4(const char *p, unsigned *cp)
{
	unsigned v = 0;
	int i;

	for (i = 0; i < 4; i++) {
		char c = p[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned)(c - 'A' + 10);
		else
			return -1;
	}
	*cp = v;
	return 0;
}

/*
 * Length of the escape at s[0..n) ('\\' first) that jsonb refuses: 6 for
 * \u0000 or a lone surrogate, 0 when the escape is fine.  *skip is how far
 * the escape (or surrogate pair) reaches.
 */
static size_t
bad_escape(const char *s, size_t n, size_t *skip)
{
	unsigned cp, lo;

	*skip = n >= 2 ? 2 : n;
	if (n < 6 || s[1] != 'u' || hex4(s + 2, &cp) == -1)
		return 0;
	*skip = 6;
	if (cp == 0 || (cp >= 0xdc00 && cp <= 0xdfff))
		return 6;
	if (cp >= 0xd800 && cp <= 0xdbff) {
		if (n >= 12 && s[6] == '\\' && s[7] == 'u' && hex4(s + 8, &lo) == 0 &&
		    lo >= 0xdc00 && lo <= 0xdfff) {
			*skip = 12;
			return 0;
		}
		return 6;
	}
	return 0;
}

static void
emit(struct scan *sc, const char *p, size_t n)
{
	memcpy(sc->out + sc->out_len, p, n);
	sc->out_len += n;
}

/* The dotted path of the value being scanned (or of the member name when naming_key). */
static void
note_here(struct scan *sc)
{
	struct buf path = BUF_INIT((LIMIT_JSON_DEPTH + 1) * (LIMIT_JSONB_PATH_KEY_LEN + 24));
	int i, failed = 0;

	for (i = 0; i < sc->depth; i++) {
		const struct frame *f = &sc->frames[i];

		if (i > 0)
			failed |= buf_addch(&path, '.');
		if (f->kind == '{')
			failed |= buf_addstr(&path, f->key);
		else
			failed |= buf_printf(&path, "%ld", f->index);
	}
	if (failed)
		response_fatal("out of memory");
	sc->fit->left_out++;
	jsonb_note_path(&sc->fit->paths, path.len ? buf_str(&path) : "(root)");
	buf_free(&path);
}

/* Remembers a member name for paths: as written, printable ASCII, capped. */
static void
set_key(struct frame *f, const char *s, size_t n)
{
	size_t i;

	if (n > LIMIT_JSONB_PATH_KEY_LEN)
		n = LIMIT_JSONB_PATH_KEY_LEN;
	for (i = 0; i < n; i++)
		f->key[i] = ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e ||
		    s[i] == '.') ? '?' : s[i];
	f->key[n] = '\0';
}

/*
 * The body of the string whose opening quote precedes s: its length up to
 * the closing quote (left when there is none: an unterminated string is
 * copied for the parser to refuse), and in *bad whether it holds an escape
 * jsonb refuses.
 */
static size_t
string_body(const char *s, size_t left, int *bad)
{
	size_t n = 0, skip, k;

	while (n < left && s[n] != '"')
		n += s[n] == '\\' ? (n + 1 < left ? 2 : 1) : 1;
	if (n > left)
		n = left;
	*bad = 0;
	for (k = 0; k < n; k += skip)
		if (s[k] == '\\')
			*bad |= bad_escape(s + k, n - k, &skip) != 0;
		else
			skip = 1;
	return n;
}

/* The length of the number token at s (at most left characters). */
static size_t
number_len(const char *s, size_t left)
{
	size_t n = 0;

	while (n < left && strchr("0123456789+-.eE", s[n]) != NULL && s[n] != '\0')
		n++;
	return n;
}

/* A string token starting at sc->pos ('"'). */
static void
scan_string(struct scan *sc)
{
	const char *s = sc->in + sc->pos + 1;
	size_t left = sc->len - sc->pos - 1, skip, k, n;
	struct frame *top = sc->depth > 0 ? &sc->frames[sc->depth - 1] : NULL;
	int is_key = top != NULL && top->kind == '{' && top->expect_key, bad;

	n = string_body(s, left, &bad);
	if (is_key)
		set_key(top, s, n);
	if (!bad) {
		emit(sc, sc->in + sc->pos, n + 1 + (n < left));
	} else if (is_key) {
		emit(sc, "\"", 1);
		for (k = 0; k < n; k += skip) {
			if (s[k] == '\\' && bad_escape(s + k, n - k, &skip))
				emit(sc, "\\ufffd", 6);
			else {
				if (s[k] != '\\')
					skip = 1;
				emit(sc, s + k, skip);
			}
		}
		if (n < left)
			emit(sc, "\"", 1);
		note_here(sc);
	} else {
		emit(sc, "null", 4);
		note_here(sc);
	}
	sc->pos += n + 1 + (n < left);
}

int
jsonb_number_storable(const char *tok)
{
	const char *e = strpbrk(tok, "eE");
	long exponent;

	if (strlen(tok) > LIMIT_JSONB_NUMBER_LEN)
		return 0;
	if (e == NULL)
		return 1;
	errno = 0;
	exponent = strtol(e + 1, NULL, 10);
	return errno != ERANGE && exponent <= LIMIT_JSONB_EXPONENT &&
	    exponent >= -LIMIT_JSONB_EXPONENT;
}

/* A number token starting at sc->pos. */
static void
scan_number(struct scan *sc)
{
	const char *s = sc->in + sc->pos;
	char tok[LIMIT_JSONB_NUMBER_LEN + 1];
	size_t n = number_len(s, sc->len - sc->pos);
	double d;
	int bad;

	bad = n > LIMIT_JSONB_NUMBER_LEN;
	if (!bad) {
		memcpy(tok, s, n);
		tok[n] = '\0';
		errno = 0;
		d = strtod(tok, NULL);
		bad = errno == ERANGE || !isfinite(d) || !jsonb_number_storable(tok);
	}
	if (bad) {
		emit(sc, "null", 4);
		note_here(sc);
	} else
		emit(sc, s, n);
	sc->pos += n;
}

/*
 * Whether text certainly holds nothing jsonb_fit would change: no string
 * with an escape bad_escape refuses, no number longer than
 * LIMIT_JSONB_NUMBER_LEN or with an exponent (only those can leave a
 * double's range), no nesting deeper than LIMIT_JSON_DEPTH.  Nearly every
 * event is such a text, and this look at it costs a fraction of the full
 * scan, which keeps paths for what it leaves out; 0 sends the text there.
 */
static int
fits_as_is(const char *text, size_t len)
{
	size_t i = 0, n;
	int depth = 0, bad;

	while (i < len) {
		switch (text[i]) {
		case '"':
			n = string_body(text + i + 1, len - i - 1, &bad);
			if (bad)
				return 0;
			i += n + 2;
			continue;
		case '{':
		case '[':
			if (++depth > LIMIT_JSON_DEPTH)
				return 0;
			break;
		case '}':
		case ']':
			depth -= depth > 0;
			break;
		case '-':
		case '0': case '1': case '2': case '3': case '4':
		case '5': case '6': case '7': case '8': case '9':
			n = number_len(text + i, len - i);
			if (n > LIMIT_JSONB_NUMBER_LEN || memchr(text + i, 'e', n) != NULL ||
			    memchr(text + i, 'E', n) != NULL)
				return 0;
			i += n;
			continue;
		default:
			break;
		}
		i++;
	}
	return 1;
}

int
jsonb_fit(const char *text, size_t len, struct jsonb_fit *out)
{
	struct scan *sc;
	struct frame *top;
	int rc = -1;
	char c;

	memset(out, 0, sizeof(*out));
	if (fits_as_is(text, len)) {
		out->text = mem_alloc(len + 1);
		memcpy(out->text, text, len);
		out->text[len] = '\0';
		out->len = len;
		return 0;
	}
	sc = mem_calloc(1, sizeof(*sc));
	sc->in = text;
	sc->len = len;
	sc->out = mem_alloc(len + 1);
	sc->fit = out;
	while (sc->pos < len) {
		c = text[sc->pos];
		top = sc->depth > 0 ? &sc->frames[sc->depth - 1] : NULL;
		if (c == '"') {
			scan_string(sc);
			continue;
		}
		if (c == '-' || (c >= '0' && c <= '9')) {
			scan_number(sc);
			continue;
		}
		switch (c) {
		case '{':
		case '[':
			if (sc->depth > LIMIT_JSON_DEPTH)
				goto out;
			top = &sc->frames[sc->depth++];
			memset(top, 0, sizeof(*top));
			top->kind = c;
			top->expect_key = c == '{';
			break;
		case '}':
		case ']':
			if (sc->depth > 0)
				sc->depth--;
			break;
		case ',':
			if (top && top->kind == '{')
				top->expect_key = 1;
			else if (top)
				top->index++;
			break;
		case ':':
			if (top && top->kind == '{')
				top->expect_key = 0;
			break;
		default:
			break;
		}
		emit(sc, &c, 1);
		sc->pos++;
	}
	sc->out[sc->out_len] = '\0';
	out->text = sc->out;
	out->len = sc->out_len;
	sc->out = NULL;
	rc = 0;
out:
	free(sc->out);
	free(sc);
	if (rc != 0)
		jsonb_fit_free(out);
	return rc;
}

void
jsonb_fit_free(struct jsonb_fit *fit)
{
	if (fit == NULL)
		return;
	free(fit->text);
	json_object_put(fit->paths);
	memset(fit, 0, sizeof(*fit));
}

void
jsonb_note_path(struct json_object **paths, const char *path)
{
	struct json_object *s;

	if (*paths == NULL && (*paths = json_object_new_array()) == NULL)
		response_fatal("out of memory");
	if (json_object_array_length(*paths) >= LIMIT_JSONB_PATHS)
		return;
	if ((s = json_object_new_string(path)) == NULL || json_object_array_add(*paths, s) != 0)
		response_fatal("out of memory");
}
