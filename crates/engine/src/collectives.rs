//! [`Collectives`] on an MPI sub-communicator: what a multi-rank unit uses to reduce, gather
//! and broadcast among exactly its own ranks.

use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use skypipe_stage::Collectives;

/// Elements per MPI call, well below the 2^31 count limit.
const CHUNK: usize = 1 << 26;

/// The collectives of one multi-rank unit; the communicator is freed when it is dropped.
pub(crate) struct MpiCollectives {
    comm: SimpleCommunicator,
}

impl MpiCollectives {
    /// Wraps the unit's sub-communicator.
    pub fn new(comm: SimpleCommunicator) -> Self {
        Self { comm }
    }
}

impl Collectives for MpiCollectives {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    fn size(&self) -> usize {
        self.comm.size() as usize
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) {
        for chunk in values.chunks_mut(CHUNK) {
            let send = chunk.to_vec();
            self.comm
                .all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
    }

    fn all_reduce_sum_u64(&self, values: &mut [u64]) {
        for chunk in values.chunks_mut(CHUNK) {
            let send = chunk.to_vec();
            self.comm
                .all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
    }

    fn broadcast_bytes(&self, root: usize, bytes: &mut Vec<u8>) {
        let root = self.comm.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        for chunk in bytes.chunks_mut(CHUNK) {
            root.broadcast_into(chunk);
        }
    }

    fn all_gather_bytes(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        let size = self.size();
        assert!(
            mine.len() < CHUNK,
            "all_gather_bytes is for small values ({} bytes given)",
            mine.len()
        );
        let mut lengths = vec![0_i32; size];
        self.comm
            .all_gather_into(&(mine.len() as i32), &mut lengths[..]);
        let displacements: Vec<i32> = lengths
            .iter()
            .scan(0, |acc, &n| {
                let start = *acc;
                *acc += n;
                Some(start)
            })
            .collect();
        let total: i32 = lengths.iter().sum();
        if total == 0 {
            // Every rank knows the total: skipping the zero-byte Allgatherv together is safe,
            // and avoids MPI implementations that abort on an all-empty exchange.
            return vec![Vec::new(); size];
        }
        let mut buffer = vec![0_u8; total as usize];
        {
            let mut partition =
                PartitionMut::new(&mut buffer[..], &lengths[..], &displacements[..]);
            self.comm.all_gather_varcount_into(mine, &mut partition);
        }
        lengths
            .iter()
            .zip(&displacements)
            .map(|(&n, &d)| buffer[d as usize..(d + n) as usize].to_vec())
            .collect()
    }

    fn barrier(&self) {
        self.comm.barrier();
    }
}
