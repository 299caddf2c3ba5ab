//! [`Collectives`] on an MPI sub-communicator: what a multi-rank unit uses to reduce, gather
//! and broadcast among exactly its own ranks.

use mpi::collective::SystemOperation;
use mpi::datatype::{Equivalence, Partition, PartitionMut};
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

impl MpiCollectives {
    /// `MPI_Alltoall` of the counts, then `MPI_Alltoallv` of the values.
    fn all_to_all<T: Equivalence + Copy + Default>(
        &self,
        send: &[T],
        counts: &[usize],
    ) -> (Vec<T>, Vec<usize>) {
        let size = self.size();
        assert_eq!(counts.len(), size, "one count per rank");
        assert_eq!(
            counts.iter().sum::<usize>(),
            send.len(),
            "counts add up to the values sent"
        );
        let as_count = |n: usize| i32::try_from(n).expect("fewer than 2^31 values exchanged");
        let send_counts: Vec<i32> = counts.iter().map(|&n| as_count(n)).collect();
        let mut recv_counts = vec![0_i32; size];
        self.comm
            .all_to_all_into(&send_counts[..], &mut recv_counts[..]);
        let offsets = |c: &[i32]| -> Vec<i32> {
            c.iter()
                .scan(0_i32, |acc, &n| {
                    let start = *acc;
                    *acc = acc
                        .checked_add(n)
                        .expect("fewer than 2^31 values exchanged");
                    Some(start)
                })
                .collect()
        };
        let (send_offsets, recv_offsets) = (offsets(&send_counts), offsets(&recv_counts));
        let total: usize = recv_counts.iter().map(|&n| n as usize).sum();
        let mut recv = vec![T::default(); total];
        {
            let sent = Partition::new(send, &send_counts[..], &send_offsets[..]);
            let mut received =
                PartitionMut::new(&mut recv[..], &recv_counts[..], &recv_offsets[..]);
            self.comm.all_to_all_varcount_into(&sent, &mut received);
        }
        (recv, recv_counts.iter().map(|&n| n as usize).collect())
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

    fn reduce_sum_f64(&self, root: usize, values: &mut [f64]) {
        let root_process = self.comm.process_at_rank(root as i32);
        for chunk in values.chunks_mut(CHUNK) {
            let send = chunk.to_vec();
            if self.rank() == root {
                root_process.reduce_into_root(&send[..], chunk, SystemOperation::sum());
            } else {
                root_process.reduce_into(&send[..], SystemOperation::sum());
            }
        }
    }

    fn all_to_all_f64(&self, send: &[f64], counts: &[usize]) -> (Vec<f64>, Vec<usize>) {
        self.all_to_all(send, counts)
    }

    fn all_to_all_u64(&self, send: &[u64], counts: &[usize]) -> (Vec<u64>, Vec<usize>) {
        self.all_to_all(send, counts)
    }
}
