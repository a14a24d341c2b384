/* Placeholder, being written. */
#include "cors.h"
int cors_handle(const struct request *r, const char *methods) { (void)r; (void)methods; return 0; }
