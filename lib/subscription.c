#include "subscription.h"
