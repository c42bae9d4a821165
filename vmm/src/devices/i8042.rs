//! Just enough of the i8042 keyboard controller: the guest's `reboot`
//! (with `reboot=k`) writes 0xfe to the command port, which ends the VM.
//! Reads report an empty controller so the guest's probe gives up fast.

use super::bus::BusDevice;
use super::{ExitReason, VmExit};

const CMD_RESET: u8 = 0xfe;

pub struct I8042 {
    exit: VmExit,
}

impl I8042 {
    pub fn new(exit: VmExit) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Port 0x64 is offset 4 from 0x60.
        if offset == 4 && data.first() == Some(&CMD_RESET) {
            self.exit.request(ExitReason::Reset);
        }
    }
}
