//! The control queue: task management functions and asynchronous
//! notification queries (virtio 1.2, 5.6.6.2).
//!
//! TMF request: `type:u32 subtype:u32 lun[8] tag:u64` (24 bytes), response
//! `response:u8`. AN request: `type:u32 lun[8] event_requested:u32` (16
//! bytes), response `event_actual:u32 response:u8`.

use std::io::{Read, Write};
use std::sync::Arc;

use scsi::{TaskMgmt, TmfResponse};
use virtio_queue::{DescriptorChain, Queue};

use super::request::{decode_lun, drain_queue, response, ChainError};
use super::Controller;
use crate::virtio::chain::split_chain;
use crate::virtio::{GuestMemory, VirtioInterrupt};

/// Control request types.
pub const T_TMF: u32 = 0;
/// AN query.
pub const T_AN_QUERY: u32 = 1;
/// AN subscribe.
pub const T_AN_SUBSCRIBE: u32 = 2;

/// TMF subtypes.
pub mod tmf {
    /// ABORT TASK
    pub const ABORT_TASK: u32 = 0;
    /// ABORT TASK SET
    pub const ABORT_TASK_SET: u32 = 1;
    /// CLEAR ACA
    pub const CLEAR_ACA: u32 = 2;
    /// CLEAR TASK SET
    pub const CLEAR_TASK_SET: u32 = 3;
    /// I_T NEXUS RESET
    pub const I_T_NEXUS_RESET: u32 = 4;
    /// LOGICAL UNIT RESET
    pub const LOGICAL_UNIT_RESET: u32 = 5;
    /// QUERY TASK
    pub const QUERY_TASK: u32 = 6;
    /// QUERY TASK SET
    pub const QUERY_TASK_SET: u32 = 7;
}

/// Size of a TMF request.
pub const TMF_REQ_LEN: usize = 24;
/// Size of an AN request.
pub const AN_REQ_LEN: usize = 16;
/// Size of an AN response.
pub const AN_RESP_LEN: usize = 5;

/// Map a TMF subtype to the SAM-5 function.
pub fn tmf_from_subtype(subtype: u32, tag: u64) -> Option<TaskMgmt> {
    Some(match subtype {
        tmf::ABORT_TASK => TaskMgmt::AbortTask(tag),
        tmf::ABORT_TASK_SET => TaskMgmt::AbortTaskSet,
        tmf::CLEAR_ACA => TaskMgmt::ClearAca,
        tmf::CLEAR_TASK_SET => TaskMgmt::ClearTaskSet,
        tmf::I_T_NEXUS_RESET => TaskMgmt::ItNexusReset,
        tmf::LOGICAL_UNIT_RESET => TaskMgmt::LogicalUnitReset,
        tmf::QUERY_TASK => TaskMgmt::QueryTask(tag),
        tmf::QUERY_TASK_SET => TaskMgmt::QueryTaskSet,
        _ => return None,
    })
}

fn tmf_response(r: TmfResponse) -> u8 {
    match r {
        TmfResponse::Complete => response::OK,
        TmfResponse::Succeeded => response::FUNCTION_SUCCEEDED,
        TmfResponse::Rejected => response::FUNCTION_REJECTED,
        TmfResponse::IncorrectLun => response::INCORRECT_LUN,
    }
}

/// Serves the control queue.
#[derive(Debug, Clone)]
pub struct ControlProcessor {
    pub(crate) ctrl: Arc<Controller>,
}

impl ControlProcessor {
    /// Serve every available control request.
    pub fn process_queue(
        &self,
        mem: &GuestMemory,
        queue: &mut Queue,
        index: u16,
        irq: &dyn VirtioInterrupt,
    ) -> Result<(), ChainError> {
        drain_queue(mem, queue, index, irq, |chain| {
            self.handle_chain(mem, chain)
        })
    }

    /// Handle one control request; returns the used length.
    pub fn handle_chain(
        &self,
        mem: &GuestMemory,
        chain: DescriptorChain<&GuestMemory>,
    ) -> Result<u32, ChainError> {
        let (mut reader, mut writer) = split_chain(mem, chain)?;
        let got = reader.available_bytes();
        if got < 4 {
            return Err(ChainError::RequestTooShort { need: 4, got });
        }
        let mut req = [0u8; TMF_REQ_LEN];
        reader
            .read_exact(&mut req[..4])
            .map_err(|_| ChainError::Memory)?;
        let ty = u32::from_le_bytes([req[0], req[1], req[2], req[3]]);
        let (need, resp_need) = match ty {
            T_TMF => (TMF_REQ_LEN, 1),
            T_AN_QUERY | T_AN_SUBSCRIBE => (AN_REQ_LEN, AN_RESP_LEN),
            other => return Err(ChainError::ControlType(other)),
        };
        if got < need {
            return Err(ChainError::RequestTooShort { need, got });
        }
        let wavail = writer.available_bytes();
        if wavail < resp_need {
            return Err(ChainError::ResponseTooShort {
                need: resp_need,
                got: wavail,
            });
        }
        reader
            .read_exact(&mut req[4..need])
            .map_err(|_| ChainError::Memory)?;
        if ty == T_TMF {
            let subtype = u32::from_le_bytes([req[4], req[5], req[6], req[7]]);
            let mut lun = [0u8; 8];
            lun.copy_from_slice(&req[8..16]);
            let mut tag = [0u8; 8];
            tag.copy_from_slice(&req[16..24]);
            let r = self.tmf(&lun, subtype, u64::from_le_bytes(tag));
            writer.write_all(&[r]).map_err(|_| ChainError::Memory)?;
            Ok(1)
        } else {
            // No asynchronous notification classes are supported: answer
            // event_actual = 0 with response OK (QEMU does the same).
            let mut resp = [0u8; AN_RESP_LEN];
            resp[4] = response::OK;
            writer.write_all(&resp).map_err(|_| ChainError::Memory)?;
            Ok(5)
        }
    }

    /// Execute a TMF and return the virtio response code.
    pub fn tmf(&self, lun: &[u8; 8], subtype: u32, tag: u64) -> u8 {
        let Some((tid, l)) = decode_lun(lun) else {
            return response::BAD_TARGET;
        };
        let Some((target, nexus)) = self.ctrl.target(tid) else {
            return response::BAD_TARGET;
        };
        let Some(f) = tmf_from_subtype(subtype, tag) else {
            return response::FUNCTION_REJECTED;
        };
        if f != TaskMgmt::ItNexusReset && !target.has_lun(l) {
            return response::INCORRECT_LUN;
        }
        tmf_response(target.task_mgmt(&nexus, l, f))
    }
}
