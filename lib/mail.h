/*
 * Internet messages: RFC 5322 headers and a MIME (RFC 2045-2047)
 * multipart/alternative body with a text and an HTML part.  Pure
 * functions that build bytes in a buffer; no I/O (smtp.c sends what
 * this renders, compose.c decides what goes in).
 *
 * Every line ends in CRLF.  Bodies are quoted-printable (RFC 2045 6.7)
 * with lines of at most 76 characters, and headers are folded or
 * RFC 2047-encoded, so no line comes near the 998 octets SMTP allows
 * (RFC 5321 4.5.3.1.6) whatever a template or a value holds.  The MIME
 * boundary starts with "=_", which quoted-printable text cannot contain
 * ('=' is only ever followed by two hex digits or a line break).
 */
#ifndef MAIL_H
#define MAIL_H

#include <stddef.h>
#include <time.h>

#include "buf.h"

/*
 * Whether addr is an address we send to: ASCII local@domain, a
 * dot-atom local part (RFC 5322 3.4.1) of at most 64 octets, a domain
 * of letter-digit-hyphen labels with at least one dot, at most
 * LIMIT_MAIL_ADDRESS octets in all.  Quoted local parts, address
 * literals and non-ASCII addresses are refused rather than encoded:
 * none of them can be written into a header or an SMTP command unchanged.
 */
int mail_address_valid(const char *addr);

/*
 * Splits a mailbox as settings give it, "Display Name <addr>" or a bare
 * "addr", into its display name (possibly "") and address.  0 with both
 * malloc'ed (caller frees), or -1 (nothing allocated) when the address
 * is not mail_address_valid or the name holds control characters.
 */
int mail_mailbox_parse(const char *mailbox, char **name, char **addr)
    __attribute__((warn_unused_result));

/* The domain part of a valid address (a pointer into addr). */
const char *mail_address_domain(const char *addr);

/* One notification mail.  Strings are UTF-8; text and html may end lines in LF or CRLF. */
struct mail {
	const char *from_name;	/* display name or NULL */
	const char *from_addr;
	const char *reply_name;	/* Reply-To display name or NULL */
	const char *reply_addr;	/* NULL: no Reply-To */
	const char *to;
	const char *subject;
	const char *text;
	const char *html;
	const char *message_id;	/* with its angle brackets: "<...@...>" */
	const char *kind;	/* X-Billing-Notification value, or NULL */
	time_t date;
};

/*
 * Appends the whole message to out.  0, or -1 when out's ceiling is
 * reached (out then holds a partial message).
 */
int mail_render(const struct mail *m, struct buf *out) __attribute__((warn_unused_result));

/*
 * The Message-ID of a notification, "<billing.<id>.<created_us>@<domain>>":
 * the same row gives the same id on every attempt, and a row id with its
 * creation time in microseconds does not repeat across databases.
 * malloc'ed.
 */
char *mail_message_id(const char *id, long long created_us, const char *domain);

/* The building blocks, exported for the unit tests. */

/* Appends s (n bytes, LF or CRLF line ends) quoted-printable with CRLF line ends. */
int mail_qp_encode(struct buf *out, const char *s, size_t n) __attribute__((warn_unused_result));

/*
 * Appends "Name: value" CRLF for an unstructured header (Subject):
 * printable ASCII is folded at blanks before 78 columns; anything else
 * (non-ASCII, "=?", a word too long to fold) becomes RFC 2047
 * encoded-words (UTF-8, base64), each at most 75 characters and split
 * only between characters.  Control characters become blanks.
 */
int mail_header_unstructured(struct buf *out, const char *name, const char *value)
    __attribute__((warn_unused_result));

/*
 * Appends "Name: " display-name <addr> CRLF: the name as a quoted string
 * when it is printable ASCII, as encoded-words otherwise; just the
 * address when name is NULL or empty.
 */
int mail_header_mailbox(struct buf *out, const char *name, const char *display,
    const char *addr) __attribute__((warn_unused_result));

/* Appends an RFC 5322 3.3 date in UTC: "Thu, 26 Nov 2026 09:00:00 +0000". */
int mail_date(struct buf *out, time_t t) __attribute__((warn_unused_result));

#endif
