#include "ckvm.h"

#include <stdlib.h>

int ckvm_set_gsi_routing(int fd, const struct ckvm_route *routes, uint32_t count) {
    struct kvm_irq_routing *table = calloc(1, sizeof(*table) + count * sizeof(struct kvm_irq_routing_entry));
    if (!table) return -ENOMEM;
    table->nr = count;
    for (uint32_t i = 0; i < count; i++) {
        struct kvm_irq_routing_entry *e = &table->entries[i];
        e->gsi = routes[i].gsi;
        e->type = routes[i].type;
        if (routes[i].type == KVM_IRQ_ROUTING_MSI) {
            e->u.msi.address_lo = routes[i].a;
            e->u.msi.address_hi = routes[i].b;
            e->u.msi.data = routes[i].c;
        } else {
            e->u.irqchip.irqchip = routes[i].a;
            e->u.irqchip.pin = routes[i].b;
        }
    }
    int r = CKVM_RESULT(ioctl(fd, KVM_SET_GSI_ROUTING, table));
    free(table);
    return r;
}
