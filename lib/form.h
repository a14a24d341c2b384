/*
 * application/x-www-form-urlencoded bodies with Stripe's bracket
 * notation (`line_items[0][price]=...`), built in a capped buffer.
 */
#ifndef FORM_H
#define FORM_H

#include "buf.h"

struct form {
	struct buf b;
};

void form_init(struct form *f);

/* Appends key=value (both percent-encoded).  0, or -1 past LIMIT_FORM_BODY. */
int form_add(struct form *f, const char *key, const char *value)
    __attribute__((warn_unused_result));

/* Appends key=<decimal n>. */
int form_add_long(struct form *f, const char *key, long long n)
    __attribute__((warn_unused_result));

/*
 * Appends an already encoded body (a stored request being repeated
 * exactly, e.g. with its Idempotency-Key).  0, or -1 past LIMIT_FORM_BODY.
 */
int form_add_encoded(struct form *f, const char *encoded) __attribute__((warn_unused_result));

/* The encoded body ("" when empty). Owned by f. */
const char *form_str(const struct form *f);
size_t form_len(const struct form *f);

void form_free(struct form *f);

#endif
