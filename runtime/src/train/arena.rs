//! The memory the units' activations and gradients live in: one zeroed region per
//! [`Trainer`](super::Trainer), carved into [`Span`]s.
//!
//! A training step streams about 14 MB of activations and gradients for LeNet at batch 256,
//! most of it once out to memory and back. In 4 KB pages that is some 3,500 translations
//! the TLB cannot hold, and under a hypervisor every miss walks two page tables. One
//! region aligned to 2 MB and advised as transparent huge pages (`MADV_HUGEPAGE`, on Linux)
//! takes seven translations instead; the largest buffer of a unit (conv1's `a` for 64
//! images, 1.2 MB) could never fill a huge page on its own. Elsewhere, or when the kernel
//! refuses the mapping, the region comes from the global allocator in ordinary pages.

use std::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use std::ptr::NonNull;

/// The size and alignment of a transparent huge page on x86-64.
const HUGE_PAGE: usize = 2 << 20;
/// Every span starts on a cache line.
const LINE_FLOATS: usize = 16;

/// Where a region's memory came from, to give it back the same way.
#[derive(Debug)]
enum Source {
    /// An anonymous mapping: its start and length.
    #[cfg(target_os = "linux")]
    Mapped(*mut libc::c_void, usize),
    /// The global allocator, with this layout.
    Heap(Layout),
    /// Nothing (an empty region).
    Empty,
}

/// A zeroed region of `f32`s, freed on drop.
#[derive(Debug)]
pub(super) struct Arena {
    ptr: NonNull<f32>,
    /// Floats in the region.
    len: usize,
    /// Floats handed out by [`Arena::take`].
    used: usize,
    source: Source,
}

// SAFETY: the region is plain memory owned by the arena; the spans carved from it are
// disjoint, and each is used by one thread at a time (the one holding its unit's lock).
unsafe impl Send for Arena {}
// SAFETY: as above; the arena itself is never written through a shared reference.
unsafe impl Sync for Arena {}

impl Arena {
    /// An empty region.
    pub(super) fn empty() -> Arena {
        Arena {
            ptr: NonNull::dangling(),
            len: 0,
            used: 0,
            source: Source::Empty,
        }
    }

    /// A zeroed region of at least `floats` floats: advised as huge pages if `huge` and it
    /// fills at least one (a smaller one gains nothing from them), else from the heap.
    pub(super) fn new(floats: usize, huge: bool) -> Arena {
        if floats == 0 {
            return Arena::empty();
        }
        let bytes = floats
            .checked_mul(4)
            .and_then(|b| b.checked_next_multiple_of(4 * LINE_FLOATS))
            .unwrap_or_else(|| capacity_overflow());
        #[cfg(target_os = "linux")]
        if huge && bytes >= HUGE_PAGE {
            let mapped = bytes
                .checked_next_multiple_of(HUGE_PAGE)
                .and_then(Arena::mapped);
            if let Some(arena) = mapped {
                return arena;
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = huge;
        let layout =
            Layout::from_size_align(bytes, 4 * LINE_FLOATS).unwrap_or_else(|_| capacity_overflow());
        // SAFETY: the layout's size is nonzero.
        let ptr = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr.cast::<f32>()) else {
            handle_alloc_error(layout)
        };
        Arena {
            ptr,
            len: bytes / 4,
            used: 0,
            source: Source::Heap(layout),
        }
    }

    /// `bytes` (a multiple of [`HUGE_PAGE`]) of an anonymous mapping, aligned to a huge
    /// page and advised as huge pages; `None` if the kernel refuses the mapping. The pages
    /// are the kernel's zero pages until first written, so nothing is touched here.
    #[cfg(target_os = "linux")]
    fn mapped(bytes: usize) -> Option<Arena> {
        let mapped = bytes.checked_add(HUGE_PAGE)?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let skip = (base as usize).next_multiple_of(HUGE_PAGE) - base as usize;
        // SAFETY: `skip < HUGE_PAGE`, so `skip + bytes <= mapped` stays inside the mapping.
        let start = unsafe { base.cast::<u8>().add(skip) };
        // Advice only: without huge pages the region still works, in 4 KB pages.
        // SAFETY: the range lies inside the mapping made above.
        unsafe { libc::madvise(start.cast(), bytes, libc::MADV_HUGEPAGE) };
        Some(Arena {
            ptr: NonNull::new(start.cast::<f32>())?,
            len: bytes / 4,
            used: 0,
            source: Source::Mapped(base, mapped),
        })
    }

    /// The next `len` floats of the region, starting on a cache line.
    ///
    /// # Panics
    ///
    /// If the region has fewer than `len` floats left: the caller sized it with
    /// [`Arena::floats`] for every span it takes.
    pub(super) fn take(&mut self, len: usize) -> Span {
        if len == 0 {
            return Span::default();
        }
        let end = self.used + len;
        assert!(
            end <= self.len,
            "arena sized for {} floats, not {end}",
            self.len
        );
        // SAFETY: `used..end` lies inside the region, and no other span covers it.
        let ptr = unsafe { self.ptr.add(self.used) };
        self.used = end.next_multiple_of(LINE_FLOATS);
        Span { ptr, len }
    }

    /// The floats a region needs for spans of these lengths.
    pub(super) fn floats(lens: impl IntoIterator<Item = usize>) -> usize {
        lens.into_iter()
            .filter(|&l| l > 0)
            .map(|l| l.next_multiple_of(LINE_FLOATS))
            .sum()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        match self.source {
            #[cfg(target_os = "linux")]
            // SAFETY: the mapping made in `mapped`, unmapped once.
            Source::Mapped(base, len) => unsafe {
                libc::munmap(base, len);
            },
            // SAFETY: allocated in `new` with this layout.
            Source::Heap(layout) => unsafe { dealloc(self.ptr.as_ptr().cast(), layout) },
            Source::Empty => {}
        }
    }
}

#[cold]
fn capacity_overflow() -> ! {
    panic!("training buffers larger than the address space")
}

/// A buffer carved from an [`Arena`]: used as a `[f32]` slice. It must not outlive its
/// arena; the [`Trainer`](super::Trainer) drops or re-carves every span before it frees
/// the arena they came from.
pub(super) struct Span {
    ptr: NonNull<f32>,
    len: usize,
}

// SAFETY: a span is the only handle to its floats (spans are disjoint), like a `&mut [f32]`.
unsafe impl Send for Span {}
// SAFETY: shared access only reads, through `Deref`.
unsafe impl Sync for Span {}

impl Default for Span {
    /// An empty span.
    fn default() -> Span {
        Span {
            ptr: NonNull::dangling(),
            len: 0,
        }
    }
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Span({} floats)", self.len)
    }
}

impl std::ops::Deref for Span {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `ptr..ptr + len` lies in a live arena (or `len` is 0 and `ptr` dangling
        // but aligned) and holds initialized floats (the region is zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Span {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spans are zeroed, disjoint, start on cache lines and fit the sized region.
    #[test]
    fn spans_are_disjoint_zeroed_and_aligned() {
        let lens = [5, 0, HUGE_PAGE / 4, 16, 3];
        let mut arena = Arena::new(Arena::floats(lens), true);
        let mut spans: Vec<Span> = lens.iter().map(|&l| arena.take(l)).collect();
        for (s, &l) in spans.iter().zip(&lens) {
            assert_eq!(s.len(), l);
            assert!(s.iter().all(|&v| v == 0.0));
            if l > 0 {
                assert_eq!(s.as_ptr() as usize % 64, 0, "cache-line aligned");
            }
        }
        for (k, s) in spans.iter_mut().enumerate() {
            s.fill(k as f32 + 1.0);
        }
        for (k, s) in spans.iter().enumerate() {
            assert!(
                s.iter().all(|&v| v == k as f32 + 1.0),
                "span {k} was overwritten"
            );
        }
        #[cfg(target_os = "linux")]
        assert_eq!(
            arena.ptr.as_ptr() as usize % HUGE_PAGE,
            0,
            "huge-page aligned"
        );
        // Ordinary pages when asked for, or when the region would not fill a huge page.
        for (floats, huge) in [(HUGE_PAGE, false), (100, true)] {
            let small = Arena::new(floats, huge);
            assert!(
                matches!(small.source, Source::Heap(_)),
                "{:?}",
                small.source
            );
        }
    }

    /// On Linux the region is its own mapping, aligned to a huge page and advised as huge
    /// pages: the kernel lists the `hg` flag on exactly that range (whether it then backs
    /// it with huge pages depends on the system's settings and free memory).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_region_is_advised_as_huge_pages() {
        let mut arena = Arena::new(HUGE_PAGE / 4 + 1, true);
        assert!(
            matches!(arena.source, Source::Mapped(..)),
            "{:?}",
            arena.source
        );
        let span = arena.take(HUGE_PAGE / 4 + 1);
        let start = span.as_ptr() as usize;
        let end = start + 2 * HUGE_PAGE;
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let is_header = |l: &str| {
            l.split_whitespace().next().is_some_and(|t| {
                t.contains('-') && t.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
            })
        };
        let lines: Vec<&str> = smaps.lines().collect();
        let header = format!("{start:x}-{end:x} ");
        let at = lines
            .iter()
            .position(|l| l.starts_with(&header))
            .unwrap_or_else(|| panic!("no mapping {header}in\n{smaps}"));
        let flags = lines[at + 1..]
            .iter()
            .take_while(|l| !is_header(l))
            .find(|l| l.starts_with("VmFlags:"))
            .expect("VmFlags");
        assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
    }
}
