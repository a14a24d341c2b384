/* Placeholder, being written. */
#include "log.h"
#include "response.h"

int
main(void)
{
	log_begin("usage");
	response_error(OUT_INTERNAL, "not implemented yet");
	return 0;
}
