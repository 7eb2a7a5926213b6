/* The library's JSON forms, shared by every sink (src/json_forms.h). */
#ifndef CLI_LIB_EXTRAS_H
#define CLI_LIB_EXTRAS_H

#include "json_forms.h"

#endif
