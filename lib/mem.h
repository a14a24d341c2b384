/*
 * Allocation that cannot fail from the caller's point of view: a CGI
 * process lives for one request, so running out of memory ends that
 * request with a 500 (response_fatal) instead of threading NULL checks
 * through every caller (tmux's xmalloc, Redis's zmalloc).
 */
#ifndef MEM_H
#define MEM_H

#include <stddef.h>

/* Never return NULL.  mem_alloc(0) returns a unique 1-byte block. */
void *mem_alloc(size_t size) __attribute__((malloc, returns_nonnull));
void *mem_calloc(size_t n, size_t size) __attribute__((malloc, returns_nonnull));
void *mem_realloc(void *p, size_t size) __attribute__((returns_nonnull));
char *mem_strdup(const char *s) __attribute__((malloc, returns_nonnull));
/* Copies at most n bytes of s and NUL-terminates. */
char *mem_strndup(const char *s, size_t n) __attribute__((malloc, returns_nonnull));

/* Wipes len bytes at p (not optimised away) then frees it; NULL is fine. */
void mem_free_secret(void *p, size_t len);

#endif
