/* Placeholder, being written. */
#include "form.h"
