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

int ckvm_get_msr_index_list(int fd, uint32_t *indices, uint32_t capacity, uint32_t *needed) {
    struct kvm_msr_list *list = calloc(1, sizeof(*list) + capacity * sizeof(uint32_t));
    if (!list) return -ENOMEM;
    list->nmsrs = capacity;
    int r = CKVM_RESULT(ioctl(fd, KVM_GET_MSR_INDEX_LIST, list));
    *needed = list->nmsrs;
    if (r >= 0) {
        for (uint32_t i = 0; i < list->nmsrs && i < capacity; i++) indices[i] = list->indices[i];
        r = (int)list->nmsrs;
    }
    free(list);
    return r;
}

static struct kvm_msrs *msrs_table(const uint32_t *indices, const uint64_t *values, uint32_t count) {
    struct kvm_msrs *m = calloc(1, sizeof(*m) + count * sizeof(struct kvm_msr_entry));
    if (!m) return NULL;
    m->nmsrs = count;
    for (uint32_t i = 0; i < count; i++) {
        m->entries[i].index = indices[i];
        m->entries[i].data = values ? values[i] : 0;
    }
    return m;
}

int ckvm_get_msrs_flat(int fd, const uint32_t *indices, uint64_t *values, uint32_t count) {
    struct kvm_msrs *m = msrs_table(indices, NULL, count);
    if (!m) return -ENOMEM;
    int r = CKVM_RESULT(ioctl(fd, KVM_GET_MSRS, m));
    for (int i = 0; i < r; i++) values[i] = m->entries[i].data;
    free(m);
    return r;
}

int ckvm_set_msrs_flat(int fd, const uint32_t *indices, const uint64_t *values, uint32_t count) {
    struct kvm_msrs *m = msrs_table(indices, values, count);
    if (!m) return -ENOMEM;
    int r = CKVM_RESULT(ioctl(fd, KVM_SET_MSRS, m));
    free(m);
    return r;
}
