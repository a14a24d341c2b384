/*
 * A growable byte buffer with a ceiling (curl's dynbuf, git's strbuf).
 * The data is always NUL-terminated so it can be used as a C string,
 * but may also hold NUL bytes (len is authoritative).  Appending past
 * the ceiling fails and leaves the buffer unchanged: nothing is ever
 * silently truncated.
 */
#ifndef BUF_H
#define BUF_H

#include <stdarg.h>
#include <stddef.h>

struct buf {
	char *data;	/* NULL until the first append; see buf_str() */
	size_t len;
	size_t cap;
	size_t max;	/* ceiling for len */
};

#define BUF_INIT(maxlen) { NULL, 0, 0, (maxlen) }

void buf_init(struct buf *b, size_t max);

/* 0 on success, -1 when the result would exceed the ceiling. */
int buf_add(struct buf *b, const void *p, size_t n) __attribute__((warn_unused_result));
int buf_addstr(struct buf *b, const char *s) __attribute__((warn_unused_result));
int buf_addch(struct buf *b, char c) __attribute__((warn_unused_result));
int buf_printf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), warn_unused_result));
int buf_vprintf(struct buf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0), warn_unused_result));
/* Appends s percent-encoded for application/x-www-form-urlencoded. */
int buf_add_urlencoded(struct buf *b, const char *s) __attribute__((warn_unused_result));

/* The contents as a C string; "" for an empty buffer.  Owned by b. */
const char *buf_str(const struct buf *b);

/* Empties b, keeping its memory and ceiling. */
void buf_reset(struct buf *b);

/* Hands the contents to the caller (free() it); b is left empty. Never NULL. */
char *buf_detach(struct buf *b, size_t *len);

/* Releases the memory; b may be reused after buf_init.  NULL is fine. */
void buf_free(struct buf *b);

/* Like buf_free but wipes the bytes first (keys, tokens). */
void buf_free_secret(struct buf *b);

#endif
