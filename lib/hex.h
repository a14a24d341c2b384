/*
 * Bytes as lowercase hexadecimal digits: request ids, idempotency keys,
 * signatures and MACs compared as text.
 */
#ifndef HEX_H
#define HEX_H

#include <stddef.h>

/* The 2 * n digits of raw[0..n), then a NUL: out holds 2 * n + 1 chars. */
void hex_encode(char *out, const unsigned char *raw, size_t n);

#endif
