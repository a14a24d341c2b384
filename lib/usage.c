#include "usage.h"
