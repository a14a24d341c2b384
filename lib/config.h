/*
 * Settings.  Each comes from the process environment (Apache SetEnv or
 * PassEnv) or, for shared hosts where the server config cannot be
 * edited, from a KEY=VALUE file named by BILLING_CONFIG (format in
 * README "Settings": "#" starts a comment at line start or after a
 * blank outside quotes; a quoted value keeps everything inside).  The
 * environment wins.  An empty value counts as unset.  Values are
 * secrets as far as logging goes: only names are ever logged.
 */
#ifndef CONFIG_H
#define CONFIG_H

#include "outcome.h"

/*
 * Reads BILLING_CONFIG if set.  OUT_MISCONFIGURED (and a log line naming
 * the file problem, never a value) when the file is unreadable, too big
 * or has a malformed line.  Safe to call more than once.
 */
enum outcome config_load(void) __attribute__((warn_unused_result));

/* The value, or NULL when unset or empty.  Owned by the module. */
const char *config_get(const char *name);

/* The value, or def when unset. */
const char *config_get_default(const char *name, const char *def);

/* OUT_OK and *value set, or OUT_MISCONFIGURED with a log line naming the setting. */
enum outcome config_require(const char *name, const char **value)
    __attribute__((warn_unused_result));

/*
 * An integer setting in [min, max]; def when unset.  A value that is not
 * a whole number in range is OUT_MISCONFIGURED (logged by name).
 */
enum outcome config_get_long(const char *name, long def, long min, long max,
    long *value) __attribute__((warn_unused_result));

/* A boolean setting, "true" or "false"; def when unset; anything else is OUT_MISCONFIGURED. */
enum outcome config_get_bool(const char *name, int def, int *value)
    __attribute__((warn_unused_result));

/*
 * Whether item (length len) is one of the comma-separated entries of a
 * list setting; entries are trimmed of blanks and compared exactly, or
 * case-insensitively when nocase is set.  0 when the setting is unset.
 */
int config_list_contains(const char *name, const char *item, size_t len, int nocase);

/*
 * Walks a comma-separated list value: *cursor starts at the value (NULL
 * = empty list); each call sets *item and *len to the next entry, trimmed
 * of blanks, and returns 1, skipping empty entries; 0 at the end.
 * Entries are not NUL-terminated (borrowed from the value).
 */
int config_list_next(const char **cursor, const char **item, size_t *len);

/* Forgets the loaded file (tests). */
void config_reset(void);

#endif
