#include "tap.h"

int
main(void)
{
	ok(0, "auth tests not written yet");
	return done_testing();
}
