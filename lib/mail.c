#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "limits.h"
#include "mail.h"
#include "mem.h"

/* RFC 5322 2.1.1: lines SHOULD be at most 78 characters without the CRLF. */
#define LINE_SOFT	78
/* RFC 2047 2: an encoded-word is at most 75 characters, a line holding one at most 76. */
#define EW_LINE		76
#define EW_PREFIX	"=?UTF-8?B?"
#define EW_OVERHEAD	12	/* "=?UTF-8?B?" + "?=" */
/* Quoted-printable lines are at most 76 characters, the soft break's '=' included. */
#define QP_LINE		76
/* '=' followed by '_' never occurs in quoted-printable text (RFC 2045 6.7). */
#define BOUNDARY	"=_billing-cgi_alternative"

static int
is_atext(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	    (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

static int
is_ldh(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	    c == '-';
}

/* A dot-atom local part: atext runs separated by single dots. */
static int
local_valid(const char *s, size_t n)
{
	size_t i;

	if (n == 0 || n > LIMIT_EMAIL_LOCAL_LEN || s[0] == '.' || s[n - 1] == '.')
		return 0;
	for (i = 0; i < n; i++) {
		if (s[i] == '.') {
			if (s[i + 1] == '.')
				return 0;
		} else if (!is_atext((unsigned char)s[i]))
			return 0;
	}
	return 1;
}

/* Letter-digit-hyphen labels of 1..63, no hyphen at either end, at least two. */
static int
domain_valid(const char *s, size_t n)
{
	size_t i, label = 0, labels = 1;

	if (n == 0 || n > 253)
		return 0;
	for (i = 0; i < n; i++) {
		if (s[i] == '.') {
			if (label == 0 || s[i - 1] == '-')
				return 0;
			label = 0;
			labels++;
			continue;
		}
		if (!is_ldh((unsigned char)s[i]) || (label == 0 && s[i] == '-') || ++label > 63)
			return 0;
	}
	return label > 0 && s[n - 1] != '-' && labels >= 2;
}

int
mail_address_valid(const char *addr)
{
	const char *at;
	size_t n;

	if (addr == NULL)
		return 0;
	n = strlen(addr);
	if (n > LIMIT_MAIL_ADDRESS || (at = strchr(addr, '@')) == NULL)
		return 0;
	return local_valid(addr, (size_t)(at - addr)) &&
	    domain_valid(at + 1, n - (size_t)(at - addr) - 1);
}

const char *
mail_address_domain(const char *addr)
{
	const char *at = strrchr(addr, '@');

	return at ? at + 1 : addr;
}

static void
trim(const char **s, const char **e)
{
	while (*s < *e && (**s == ' ' || **s == '\t'))
		(*s)++;
	while (*e > *s && ((*e)[-1] == ' ' || (*e)[-1] == '\t'))
		(*e)--;
}

int
mail_mailbox_parse(const char *mailbox, char **name, char **addr)
{
	const char *s = mailbox, *e, *lt, *ns, *ne, *p;
	char *a = NULL, *d = NULL;

	*name = *addr = NULL;
	if (mailbox == NULL)
		return -1;
	e = s + strlen(s);
	trim(&s, &e);
	lt = memchr(s, '<', (size_t)(e - s));
	if (lt == NULL) {
		a = mem_strndup(s, (size_t)(e - s));
		d = mem_strdup("");
	} else {
		if (e[-1] != '>' || e - 1 <= lt)
			return -1;
		a = mem_strndup(lt + 1, (size_t)(e - 1 - lt - 1));
		ns = s;
		ne = lt;
		trim(&ns, &ne);
		/* A quoted display name: the quotes are syntax, not part of the name. */
		if (ne - ns >= 2 && *ns == '"' && ne[-1] == '"') {
			ns++;
			ne--;
		}
		for (p = ns; p < ne; p++)
			if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == '"' || *p == '\\' ||
			    *p == '<' || *p == '>')
				goto bad;
		if (ne - ns > LIMIT_MAIL_DISPLAY_NAME)
			goto bad;
		d = mem_strndup(ns, (size_t)(ne - ns));
	}
	if (!mail_address_valid(a))
		goto bad;
	*name = d;
	*addr = a;
	return 0;
bad:
	free(a);
	free(d);
	return -1;
}

char *
mail_message_id(const char *id, long long created_us, const char *domain)
{
	struct buf b = BUF_INIT(LIMIT_MAIL_ADDRESS + 64);
	size_t len;

	if (buf_printf(&b, "<billing.%s.%lld@%s>", id, created_us, domain) == -1) {
		buf_free(&b);
		return NULL;
	}
	return buf_detach(&b, &len);
}

int
mail_date(struct buf *out, time_t t)
{
	static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	struct tm tm;

	/* Names spelt out here: strftime's %a/%b follow the locale, RFC 5322 3.3 does not. */
	if (gmtime_r(&t, &tm) == NULL)
		return -1;
	return buf_printf(out, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday],
	    tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* A copy of s with control characters (and DEL) turned into blanks: header text is one line. */
static char *
flatten(const char *s)
{
	char *c = mem_strdup(s ? s : ""), *p;

	for (p = c; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = ' ';
	return c;
}

static int
printable_ascii(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
			return 0;
	return 1;
}

/*
 * Appends s as encoded-words starting at column col, each on its own
 * line after the first (CRLF SP between them).  Returns the column after
 * the last word, or -1.
 */
static int
encoded_words(struct buf *out, const char *s, int col)
{
	unsigned char b64[80];
	size_t n = strlen(s), i = 0, take, fit;
	int first = 1;

	if (n == 0)
		return col;
	do {
		if (!first) {
			if (buf_addstr(out, "\r\n ") == -1)
				return -1;
			col = 1;
		}
		/* Whole base64 quads that fit on this line, as raw bytes. */
		fit = (size_t)((EW_LINE - col - EW_OVERHEAD) / 4) * 3;
		if (fit < 6 && !first)
			return -1;
		if (fit < 6) {	/* no room after a long header name: start on the next line */
			first = 0;
			continue;
		}
		take = n - i < fit ? n - i : fit;
		/* Never split a UTF-8 sequence (RFC 2047 5: whole characters only). */
		while (take > 0 && i + take < n && ((unsigned char)s[i + take] & 0xc0) == 0x80)
			take--;
		if (take == 0)
			return -1;
		EVP_EncodeBlock(b64, (const unsigned char *)s + i, (int)take);
		if (buf_printf(out, EW_PREFIX "%s?=", (const char *)b64) == -1)
			return -1;
		col += EW_OVERHEAD + (int)strlen((const char *)b64);
		i += take;
		first = 0;
	} while (i < n);
	return col;
}

/* Whether printable ASCII text s can be folded at blanks into lines of LINE_SOFT after col. */
static int
foldable(const char *s, int col)
{
	const char *w;
	size_t len;

	if (!printable_ascii(s) || strstr(s, "=?") != NULL)
		return 0;
	for (w = s; *w; w += len) {
		while (*w == ' ')
			w++;
		len = strcspn(w, " ");
		if ((int)len > LINE_SOFT - 1 - (w == s ? col : 0))
			return 0;
	}
	return 1;
}

/* Appends the words of s folded at blanks, starting at column col (runs of blanks become one). */
static int
folded(struct buf *out, const char *s, int col)
{
	const char *w = s;
	size_t len;
	int first = 1;

	for (;;) {
		while (*w == ' ')
			w++;
		if (*w == '\0')
			return 0;
		len = strcspn(w, " ");
		if (!first && col + 1 + (int)len > LINE_SOFT) {
			if (buf_addstr(out, "\r\n") == -1)
				return -1;
			col = 0;
		}
		if ((!first && buf_addch(out, ' ') == -1) || buf_add(out, w, len) == -1)
			return -1;
		col += (first ? 0 : 1) + (int)len;
		first = 0;
		w += len;
	}
}

int
mail_header_unstructured(struct buf *out, const char *name, const char *value)
{
	char *v = flatten(value);
	int col = (int)strlen(name) + 2, r;

	r = buf_printf(out, "%s: ", name);
	if (r == 0)
		r = foldable(v, col) ? folded(out, v, col) : encoded_words(out, v, col) < 0 ? -1 : 0;
	if (r == 0)
		r = buf_addstr(out, "\r\n");
	free(v);
	return r;
}

int
mail_header_mailbox(struct buf *out, const char *name, const char *display, const char *addr)
{
	char *d = flatten(display);
	const char *p;
	int col = (int)strlen(name) + 2, r;

	r = buf_printf(out, "%s: ", name);
	if (r == 0 && d[0] != '\0') {
		if (printable_ascii(d) && strstr(d, "=?") == NULL) {
			/* RFC 5322 3.2.4 quoted-string: only '"' and '\' need a backslash. */
			r = buf_addch(out, '"');
			for (p = d; r == 0 && *p; p++) {
				if (*p == '"' || *p == '\\')
					r = buf_addch(out, '\\');
				if (r == 0)
					r = buf_addch(out, *p);
			}
			if (r == 0)
				r = buf_addch(out, '"');
		} else
			r = encoded_words(out, d, col) < 0 ? -1 : 0;
		if (r == 0)
			r = buf_addch(out, ' ');
	}
	if (r == 0)
		r = d[0] != '\0' ? buf_printf(out, "<%s>\r\n", addr) : buf_printf(out, "%s\r\n", addr);
	free(d);
	return r;
}

/* Appends one quoted-printable token, breaking the line first when it would not fit. */
static int
qp_token(struct buf *out, const char *tok, int len, int *col)
{
	if (*col + len > QP_LINE - 1) {
		if (buf_addstr(out, "=\r\n") == -1)
			return -1;
		*col = 0;
	}
	*col += len;
	return buf_add(out, tok, (size_t)len);
}

int
mail_qp_encode(struct buf *out, const char *s, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t i, end, j;
	char tok[3];
	int col;

	for (i = 0; i < n; i = end + 1) {
		end = i;
		while (end < n && s[end] != '\n')
			end++;
		/* The line is s[i, e): a CR before the LF belongs to the line break. */
		j = end > i && end < n && s[end - 1] == '\r' ? end - 1 : end;
		col = 0;
		for (size_t k = i; k < j; k++) {
			unsigned char c = (unsigned char)s[k];
			int literal = (c >= 33 && c <= 126 && c != '=') ||
			    ((c == ' ' || c == '\t') && k + 1 < j);

			/* "From " at the start of a line would be mangled by mbox tools. */
			if (col == 0 && c == 'F' && j - k >= 5 && memcmp(s + k, "From ", 5) == 0)
				literal = 0;
			if (literal) {
				tok[0] = (char)c;
				if (qp_token(out, tok, 1, &col) == -1)
					return -1;
			} else {
				tok[0] = '=';
				tok[1] = hex[c >> 4];
				tok[2] = hex[c & 15];
				if (qp_token(out, tok, 3, &col) == -1)
					return -1;
			}
		}
		if (end < n && buf_addstr(out, "\r\n") == -1)
			return -1;
	}
	return 0;
}

static int
part(struct buf *out, const char *type, const char *body)
{
	size_t n = strlen(body);

	if (buf_printf(out, "--" BOUNDARY "\r\nContent-Type: %s; charset=UTF-8\r\n"
	    "Content-Transfer-Encoding: quoted-printable\r\n\r\n", type) == -1 ||
	    mail_qp_encode(out, body, n) == -1)
		return -1;
	/* The delimiter's own CRLF (RFC 2046 5.1.1) after the last line of the body. */
	return buf_addstr(out, "\r\n");
}

int
mail_render(const struct mail *m, struct buf *out)
{
	if (buf_addstr(out, "Date: ") == -1 || mail_date(out, m->date) == -1 ||
	    buf_addstr(out, "\r\n") == -1 ||
	    mail_header_mailbox(out, "From", m->from_name, m->from_addr) == -1 ||
	    mail_header_mailbox(out, "To", NULL, m->to) == -1 ||
	    (m->reply_addr && mail_header_mailbox(out, "Reply-To", m->reply_name,
	    m->reply_addr) == -1) ||
	    mail_header_unstructured(out, "Subject", m->subject) == -1 ||
	    buf_printf(out, "Message-ID: %s\r\n", m->message_id) == -1 ||
	    buf_addstr(out, "MIME-Version: 1.0\r\n") == -1 ||
	    /* RFC 3834: vacation responders must not answer a machine's mail. */
	    buf_addstr(out, "Auto-Submitted: auto-generated\r\n") == -1 ||
	    (m->kind && buf_printf(out, "X-Billing-Notification: %s\r\n", m->kind) == -1) ||
	    buf_addstr(out, "Content-Type: multipart/alternative; boundary=\"" BOUNDARY "\"\r\n"
	    "\r\nThis is a MIME message with a text and an HTML version.\r\n\r\n") == -1 ||
	    part(out, "text/plain", m->text) == -1 || part(out, "text/html", m->html) == -1 ||
	    buf_addstr(out, "--" BOUNDARY "--\r\n") == -1)
		return -1;
	return 0;
}
