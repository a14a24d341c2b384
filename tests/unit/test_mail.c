/*
 * lib/mail: addresses, mailboxes, Date, quoted-printable, RFC 2047
 * headers and the whole message, checked by decoding what it wrote.
 * (tests/test_mailer.py parses real deliveries with Python's email package.)
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "buf.h"
#include "jsonget.h"
#include "mail.h"
#include "tap.h"

/* Decodes quoted-printable (RFC 2045 6.7) into out; -1 on a malformed escape. */
static int
qp_decode(const char *s, struct buf *out)
{
	static const char hex[] = "0123456789ABCDEF";
	const char *h1, *h2;
	int r = 0;

	while (*s && r == 0) {
		if (s[0] == '=' && s[1] == '\r' && s[2] == '\n') {
			s += 3;
		} else if (s[0] == '=') {
			if (s[1] == '\0' || s[2] == '\0' || (h1 = strchr(hex, s[1])) == NULL ||
			    (h2 = strchr(hex, s[2])) == NULL)
				return -1;
			r = buf_addch(out, (char)(((h1 - hex) << 4) | (h2 - hex)));
			s += 3;
		} else
			r = buf_addch(out, *s++);
	}
	return r;
}

/* The longest line of s (CRLF-separated), and whether every LF follows a CR. */
static size_t
longest_line(const char *s, int *bare_lf)
{
	size_t best = 0, cur = 0;

	*bare_lf = 0;
	for (; *s; s++) {
		if (*s == '\n') {
			if (cur == 0 || s[-1] != '\r')
				*bare_lf = 1;
			if (cur - 1 > best)
				best = cur - 1;
			cur = 0;
		} else
			cur++;
	}
	return cur > best ? cur : best;
}

/* The encoded-words of an unstructured header value, decoded and joined. */
static int
ew_decode(const char *header, struct buf *out, size_t *longest_word)
{
	const char *p = header, *end;
	unsigned char raw[128];
	int n;

	*longest_word = 0;
	while ((p = strstr(p, "=?UTF-8?B?")) != NULL) {
		end = strstr(p + 10, "?=");
		if (end == NULL || end - p + 2 > 75 || (end - p - 10) % 4 != 0)
			return -1;
		if ((size_t)(end - p + 2) > *longest_word)
			*longest_word = (size_t)(end - p + 2);
		n = EVP_DecodeBlock(raw, (const unsigned char *)p + 10, (int)(end - p - 10));
		if (n < 0)
			return -1;
		/* EVP_DecodeBlock counts padding as zero bytes. */
		if (end[-1] == '=')
			n--;
		if (end[-2] == '=')
			n--;
		/* Each word must hold whole characters (RFC 2047 5). */
		if (!jsonget_clean_utf8((const char *)raw, (size_t)n) || buf_add(out, raw, (size_t)n))
			return -1;
		p = end + 2;
	}
	return 0;
}

static void
test_addresses(void)
{
	static const char *const good[] = { "a@b.co", "first.last+tag@sub.example.test",
		"o'brien@example.com", "x_y-z@a-b.example", "1@2.io" };
	char local65[80], long255[300];
	size_t i;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		ok(mail_address_valid(good[i]), "address %s accepted", good[i]);
	static const char *const bad[] = { "", "a", "@b.co", "a@", "a@b", "a..b@c.de", ".a@b.co",
		"a.@b.co", "a b@c.de", "a@b..co", "a@-b.co", "a@b-.co", "a@b.co\r\nBcc: x@y.z",
		"\xc3\xa9@b.co", "a@[127.0.0.1]", "\"q\"@b.co", "a@b@c.de", "<a@b.co>", "a@b.co." };
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ok(!mail_address_valid(bad[i]), "address refused: \"%s\"", i == 12 ? "a@b.co CRLF Bcc" :
		    bad[i]);
	memset(local65, 'l', 65);
	strcpy(local65 + 65, "@b.co");
	ok(!mail_address_valid(local65), "a 65-octet local part is refused");
	local65[64] = '@';
	local65[65] = '\0';
	strcat(local65, "b.co");
	ok(mail_address_valid(local65), "a 64-octet local part is fine");
	memset(long255, 'a', 60);
	long255[60] = '@';
	for (i = 61; i < 255; i += 50) {
		memset(long255 + i, 'd', 49);
		long255[i + 49] = '.';
	}
	long255[255] = '\0';
	long255[254] = 'o';
	ok(!mail_address_valid(long255), "an address over 254 octets is refused");
	is_str(mail_address_domain("a@mail.example.test"), "mail.example.test", "domain part");
	ok(!mail_address_valid(NULL), "NULL is no address");
}

static void
test_mailbox(void)
{
	static const struct {
		const char *in, *name, *addr;
	} cases[] = {
		{ "Billing <billing@example.test>", "Billing", "billing@example.test" },
		{ "  \"Billing, Inc.\"   <b@example.test>  ", "Billing, Inc.", "b@example.test" },
		{ "b@example.test", "", "b@example.test" },
		{ "Caf\xc3\xa9 <c@example.test>", "Caf\xc3\xa9", "c@example.test" },
		{ "<b@example.test>", "", "b@example.test" },
		{ "Name <bad>", NULL, NULL },
		{ "Name <b@example.test", NULL, NULL },
		{ "Na\nme <b@example.test>", NULL, NULL },
		{ "A \"quoted\" word <b@example.test>", NULL, NULL },
		{ "", NULL, NULL },
	};
	char *name, *addr;
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int r = mail_mailbox_parse(cases[i].in, &name, &addr);

		if (cases[i].addr == NULL) {
			ok(r == -1 && name == NULL && addr == NULL, "mailbox refused: case %zu", i);
			continue;
		}
		ok(r == 0, "mailbox parsed: case %zu", i);
		is_str(name, cases[i].name, "  display name");
		is_str(addr, cases[i].addr, "  address");
		free(name);
		free(addr);
	}
}

static void
test_date_and_id(void)
{
	struct buf b = BUF_INIT(256);
	char *id;

	ok(mail_date(&b, 0) == 0, "mail_date(0)");
	is_str(buf_str(&b), "Thu, 01 Jan 1970 00:00:00 +0000", "RFC 5322 date of the epoch");
	buf_reset(&b);
	ok(mail_date(&b, 1795770000) == 0, "mail_date");
	is_str(buf_str(&b), "Fri, 27 Nov 2026 09:00:00 +0000", "RFC 5322 date in UTC");
	buf_free(&b);
	id = mail_message_id("12", 1795521228496342LL, "example.test");
	is_str(id, "<billing.12.1795521228496342@example.test>", "Message-ID from id and created");
	free(id);
}

/* Encodes in, checks line lengths and CRLF, decodes and compares with want (LF -> CRLF). */
static void
qp_roundtrip(const char *name, const char *in, size_t n, const char *want_encoded)
{
	struct buf enc = BUF_INIT(1 << 20), dec = BUF_INIT(1 << 20), want = BUF_INIT(1 << 20);
	size_t i;
	int bare_lf;

	ok(mail_qp_encode(&enc, in, n) == 0, "qp %s: encoded", name);
	if (want_encoded)
		is_str(buf_str(&enc), want_encoded, "qp %s: as expected", name);
	ok(longest_line(buf_str(&enc), &bare_lf) <= 76 && !bare_lf,
	    "qp %s: lines of at most 76, CRLF only", name);
	for (i = 0; i < enc.len; i++)
		if ((unsigned char)enc.data[i] > 126 ||
		    ((unsigned char)enc.data[i] < 32 && enc.data[i] != '\r' && enc.data[i] != '\n' &&
		    enc.data[i] != '\t'))
			break;
	ok(i == enc.len, "qp %s: printable ASCII and tabs only", name);
	for (i = 0; i < n; i++)
		if ((in[i] == '\n' && (i == 0 || in[i - 1] != '\r') && buf_addch(&want, '\r')) ||
		    buf_addch(&want, in[i]))
			break;
	ok(qp_decode(buf_str(&enc), &dec) == 0 && dec.len == want.len &&
	    memcmp(buf_str(&dec), buf_str(&want), want.len) == 0, "qp %s: decodes to the input",
	    name);
	buf_free(&enc);
	buf_free(&dec);
	buf_free(&want);
}

static void
test_qp(void)
{
	char line[200], bytes[4096];
	unsigned int seed = 12345;
	size_t i;

	qp_roundtrip("plain", "abc", 3, "abc");
	qp_roundtrip("equals", "a=b", 3, "a=3Db");
	qp_roundtrip("trailing tab", "tab\t\nx", 6, "tab=09\r\nx");
	qp_roundtrip("trailing space at end", "end ", 4, "end=20");
	qp_roundtrip("inner spaces", "a b\tc", 5, "a b\tc");
	qp_roundtrip("utf-8", "caf\xc3\xa9", 5, "caf=C3=A9");
	qp_roundtrip("From line", "x\nFrom me", 9, "x\r\n=46rom me");
	qp_roundtrip("CRLF kept", "a\r\nb", 4, "a\r\nb");
	qp_roundtrip("lone CR", "a\rb", 3, "a=0Db");
	memset(line, 'x', 100);
	qp_roundtrip("100 x", line, 100,
	    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx=\r\n"
	    "xxxxxxxxxxxxxxxxxxxxxxxxx");
	memset(line, '=', 100);
	qp_roundtrip("100 =", line, 100, NULL);
	for (i = 0; i < sizeof(bytes); i++) {
		seed = seed * 1103515245u + 12345u;
		bytes[i] = (char)(seed >> 16);
	}
	qp_roundtrip("4 KiB of arbitrary bytes", bytes, sizeof(bytes), NULL);
	memset(bytes, 'y', sizeof(bytes));
	qp_roundtrip("one 4 KiB line", bytes, sizeof(bytes), NULL);
}

static void
test_headers(void)
{
	struct buf b = BUF_INIT(8192), dec = BUF_INIT(8192);
	const char *nonascii = "Votre abonnement \xc3\xa0 Caf\xc3\xa9 \xe2\x9c\x93 se termine "
	    "bient\xc3\xb4t \xe2\x80\x94 r\xc3\xa9glez la facture \xf0\x9f\x92\xb3 aujourd'hui";
	size_t longest;
	int bare_lf;
	char *p;

	ok(mail_header_unstructured(&b, "Subject", "Hello world") == 0, "short ASCII subject");
	is_str(buf_str(&b), "Subject: Hello world\r\n", "  as it is");
	buf_reset(&b);
	ok(mail_header_unstructured(&b, "Subject", "Your trial of Example Billing Pro ends on 27 "
	    "November 2026 and then continues at 15.00 USD per month, see the account page") == 0,
	    "long ASCII subject");
	is_str(buf_str(&b), "Subject: Your trial of Example Billing Pro ends on 27 November 2026 and"
	    " then\r\n continues at 15.00 USD per month, see the account page\r\n",
	    "  folded at a blank before column 78");
	buf_reset(&b);
	ok(mail_header_unstructured(&b, "Subject", nonascii) == 0, "non-ASCII subject");
	ok(strncmp(buf_str(&b), "Subject: =?UTF-8?B?", 19) == 0, "  encoded-words");
	ok(longest_line(buf_str(&b), &bare_lf) <= 76 && !bare_lf, "  lines of at most 76");
	ok(ew_decode(buf_str(&b), &dec, &longest) == 0, "  every word holds whole characters");
	is_str(buf_str(&dec), nonascii, "  decodes to the original");
	ok(longest <= 75, "  no encoded-word over 75 characters");
	buf_reset(&b);
	buf_reset(&dec);
	ok(mail_header_unstructured(&b, "Subject", "Hi\r\nBcc: victim@example.test") == 0,
	    "a subject with CRLF");
	is_str(buf_str(&b), "Subject: Hi Bcc: victim@example.test\r\n", "  cannot add a header");
	buf_reset(&b);
	ok(mail_header_unstructured(&b, "Subject", "looks =?like?= an encoded word") == 0,
	    "an ASCII subject with =?");
	ok(ew_decode(buf_str(&b), &dec, &longest) == 0 &&
	    strcmp(buf_str(&dec), "looks =?like?= an encoded word") == 0, "  is encoded itself");
	buf_reset(&b);
	buf_reset(&dec);
	p = malloc(301);
	memset(p, 'w', 300);
	p[300] = '\0';
	ok(mail_header_unstructured(&b, "Subject", p) == 0 &&
	    longest_line(buf_str(&b), &bare_lf) <= 76, "a 300-character word is encoded and split");
	free(p);
	buf_reset(&b);
	ok(mail_header_mailbox(&b, "From", "Billing \"HQ\"", "b@example.test") == 0 &&
	    strcmp(buf_str(&b), "From: \"Billing \\\"HQ\\\"\" <b@example.test>\r\n") == 0,
	    "ASCII display name as a quoted string");
	buf_reset(&b);
	ok(mail_header_mailbox(&b, "From", "Caf\xc3\xa9", "b@example.test") == 0 &&
	    strcmp(buf_str(&b), "From: =?UTF-8?B?Q2Fmw6k=?= <b@example.test>\r\n") == 0,
	    "non-ASCII display name as an encoded-word");
	buf_reset(&b);
	ok(mail_header_mailbox(&b, "To", NULL, "a@example.test") == 0 &&
	    strcmp(buf_str(&b), "To: a@example.test\r\n") == 0, "no display name: the address");
	buf_free(&b);
	buf_free(&dec);
}

static void
test_render(void)
{
	struct mail m = { "Billing", "billing@example.test", NULL, "support@example.test",
		"ada@example.test", "Caf\xc3\xa9 payment failed", "Text line\n--=_billing-cgi_alternative\n",
		"<p>HTML</p>\n", "<billing.1.2@example.test>", "payment_failed", 0 };
	struct buf b = BUF_INIT(65536), small = BUF_INIT(100);
	const char *s;
	int bare_lf;

	ok(mail_render(&m, &b) == 0, "a whole message renders");
	s = buf_str(&b);
	ok(strncmp(s, "Date: Thu, 01 Jan 1970 00:00:00 +0000\r\nFrom: \"Billing\" <billing@example.test>\r\n"
	    "To: ada@example.test\r\nReply-To: support@example.test\r\nSubject: =?UTF-8?B?", 134) == 0,
	    "headers in order");
	ok(strstr(s, "\r\nMessage-ID: <billing.1.2@example.test>\r\nMIME-Version: 1.0\r\n"
	    "Auto-Submitted: auto-generated\r\nX-Billing-Notification: payment_failed\r\n"
	    "Content-Type: multipart/alternative; boundary=\"=_billing-cgi_alternative\"\r\n\r\n") != NULL,
	    "MIME headers");
	ok(strstr(s, "\r\n--=_billing-cgi_alternative\r\nContent-Type: text/plain; charset=UTF-8\r\n"
	    "Content-Transfer-Encoding: quoted-printable\r\n\r\nText line\r\n"
	    "--=3D_billing-cgi_alternative\r\n\r\n--=_billing-cgi_alternative\r\n") != NULL,
	    "text part; a boundary inside a body is escaped by quoted-printable (=3D)");
	ok(strstr(s, "Content-Type: text/html; charset=UTF-8\r\nContent-Transfer-Encoding: "
	    "quoted-printable\r\n\r\n<p>HTML</p>\r\n\r\n--=_billing-cgi_alternative--\r\n") != NULL,
	    "HTML part, then the closing delimiter");
	ok(longest_line(s, &bare_lf) <= 78 && !bare_lf, "no line over 78, CRLF only");
	ok(mail_render(&m, &small) == -1, "a ceiling too small: -1, not a truncated message sent");
	buf_free(&b);
	buf_free(&small);
}

int
main(void)
{
	test_addresses();
	test_mailbox();
	test_date_and_id();
	test_qp();
	test_headers();
	test_render();
	return done_testing();
}
