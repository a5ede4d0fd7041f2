use super::*;

#[test]
fn disk_ids_differ_by_machine_and_index() {
    let a = MachineId([1; 16]);
    let b = MachineId([2; 16]);
    assert_ne!(disk_id(a, 0), disk_id(a, 1));
    assert_ne!(disk_id(a, 0), disk_id(b, 0));
    assert_eq!(disk_id(a, 3), disk_id(a, 3));
}
