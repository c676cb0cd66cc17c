/* <errno.h> for xos C guests: errno and the E* codes are in xos_guest.h. */
#include "../xos_guest.h"
