// The relay's handling of ServiceHealth reports (docs/protocol.md): an agent health-checks the
// targets of its services and reports each change, and every state after a (re)connect, on
// every link. The directory stops giving an unhealthy agent new streams of that service.
#ifndef RDV_RELAY_SERVICE_HEALTH_H_
#define RDV_RELAY_SERVICE_HEALTH_H_

#include <string_view>

#include "proto/link.pb.h"
#include "relay/directory.h"

namespace rdv {

// Records `report`, received on `carrier`, in `directory`. A change of the agent's state is
// logged once (not once per link) and counted; a report for a service the link does not serve
// (e.g. its registration was refused) is counted and otherwise ignored.
void ApplyServiceHealth(Directory& directory, const StreamCarrier& carrier,
                        const link::ServiceHealth& report, std::string_view link_description);

}  // namespace rdv

#endif  // RDV_RELAY_SERVICE_HEALTH_H_
