/* usage: placeholder, being written. */
#ifndef USAGE_H
#define USAGE_H
#endif
