//! An incremental structural check of a SQLite database file, run between the scheduled
//! full `PRAGMA integrity_check`s: only the pages that changed since an earlier verified
//! copy are checked. It reads the changed pages, the b-trees' interior pages (to learn
//! where each changed page belongs), the leftmost leaf of each b-tree (to learn its
//! height) and the freelist's trunk pages: never every leaf.
//!
//! What it finds, in each changed page that is part of a b-tree (SQLite's own
//! `checkTreePage` and `btreeComputeFreeSpace` in btree.c are the model):
//! - a page type other than the one its place in the tree calls for (table or index,
//!   interior or leaf);
//! - a cell count whose cell pointer array does not fit, a cell pointer outside the cell
//!   content area, a cell running past the usable size;
//! - cells and freeblocks overlapping one another, a freeblock chain out of order, out of
//!   bounds or with a block under 4 bytes, bytes of the page accounted for by nothing (the
//!   header's fragment count is not what is left over), more than 60 fragmented bytes;
//! - table rowids not strictly ascending, or outside the bounds the parent's keys set;
//! - a first overflow page out of range, or a b-tree or freelist page, or another checked
//!   cell's; a payload needing more overflow pages than the database has.
//!
//! And in the walk itself (every interior page, every freelist trunk): a child, root or
//! freelist page number of 0 or past the database's end, a page reached twice (a cycle, a
//! page in two b-trees, a b-tree page also on the freelist), a page at an interior level
//! that is a leaf, a freelist whose length is not the header's, and the file header's own
//! inconsistencies.
//!
//! What it cannot find: damage in a page that did not change (it was verified before),
//! beyond what the walk needs of interior pages; the content of overflow and pointer-map
//! pages, and overflow chains past their first page; index key order and whether a table
//! agrees with its indexes (records are not decoded); pages that belong nowhere (that needs
//! every page accounted for); changed pages the walk cannot reach (they count as
//! `unchecked`); and damage inside a payload that leaves the page's structure valid. Those
//! are for the full `PRAGMA integrity_check`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use shadowcopy_core::dbfiles::sqlite_uri;

/// What checking the changed pages found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageCheck {
    /// Changed pages examined as b-tree pages (their place in a tree known from its parent).
    pub checked: u64,
    /// Changed pages on the freelist (trunk or leaf) — checked only for being in range.
    pub free: u64,
    /// Changed pages not reached by the interior walk (overflow or pointer-map pages, or
    /// pages beyond the file): not checked.
    pub unchecked: u64,
    /// Pages read in all (interior pages, freelist trunks, the changed pages, and each
    /// tree's leftmost leaf, which gives its height).
    pub pages_read: u64,
    /// Each problem found, naming the page and what is wrong (empty: none).
    pub problems: Vec<String>,
}

/// Checks the pages of the database file `db` listed in `changed` (1-based page numbers,
/// as SQLite numbers them): the b-tree pages among them structurally, the free ones for
/// being in range (see the module's documentation for what that finds and what it cannot).
///
/// `db` must be a closed database with no write-ahead log pending: an error says so if a
/// `-wal` beside it is not empty. A corrupt file gives problems, not an error; errors are
/// for a file that cannot be opened or read.
pub fn check_changed_pages(db: &Path, changed: &BTreeSet<u32>) -> io::Result<PageCheck> {
    let file = open_database(db)?;
    refuse_pending_wal(db)?;
    let mut problems = Vec::new();
    let Some(header) = read_file_header(&file, &mut problems)? else {
        return Ok(PageCheck {
            unchecked: changed.len() as u64,
            problems,
            ..PageCheck::default()
        });
    };
    announce(&file, header.page_size as u64, changed);
    let trees = schema_trees(db, &mut problems);
    let mut walk = Walk::new(file, header, changed, problems);
    walk.freelist()?;
    for tree in &trees {
        walk.tree(tree)?;
    }
    Ok(walk.finish())
}

/// Most bytes of changed pages announced to the kernel before the walk.
const ANNOUNCE_LIMIT: u64 = 256 << 20;

/// Tells the kernel which pages the check will read (`POSIX_FADV_WILLNEED`), so that
/// scattered pages are read together rather than one after the other; not when they
/// are more than [`ANNOUNCE_LIMIT`] (the cache is the application's too).
fn announce(file: &File, page_size: u64, changed: &BTreeSet<u32>) {
    if (changed.len() as u64).saturating_mul(page_size) > ANNOUNCE_LIMIT {
        return;
    }
    let mut pages = changed.iter().map(|&p| u64::from(p)).peekable();
    while let Some(first) = pages.next() {
        let mut last = first;
        while let Some(next) = pages.next_if(|&n| n == last + 1) {
            last = next;
        }
        // Only advice: a file system that ignores it is read as it comes.
        let _ = rustix::fs::fadvise(
            file,
            (first - 1) * page_size,
            std::num::NonZeroU64::new((last - first + 1) * page_size),
            rustix::fs::Advice::WillNeed,
        );
    }
}

/// The length of the file header at the start of page 1.
const FILE_HEADER_LEN: usize = 100;
/// The file header's first 16 bytes.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// The smallest usable size SQLite accepts.
const MIN_USABLE_SIZE: usize = 480;
/// The deepest b-tree SQLite walks (`BTCURSOR_MAX_DEPTH`).
const MAX_TREE_DEPTH: usize = 20;
/// The most fragmented bytes a well-formed page has.
const MAX_FRAGMENTED_BYTES: usize = 60;
/// The byte SQLite locks (`PENDING_BYTE`): the page holding it is never used.
const LOCK_BYTE_OFFSET: u64 = 0x4000_0000;

/// Opens `db` for reading, refusing a symbolic link, and anything but a regular file
/// (non-blocking, so that a FIFO cannot hang the open).
fn open_database(db: &Path) -> io::Result<File> {
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(db)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", db.display()),
        ));
    }
    Ok(file)
}

/// Refuses a database whose `-wal` is not empty: its pages there would go unchecked and
/// its file's pages may be superseded.
fn refuse_pending_wal(db: &Path) -> io::Result<()> {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    match std::fs::symlink_metadata(&wal) {
        Ok(meta) if meta.len() > 0 => Err(io::Error::other(format!(
            "{} is not empty: checkpoint the database before checking its pages",
            Path::new(&wal).display()
        ))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// What the 100-byte file header says, once checked.
#[derive(Clone, Copy, Debug)]
struct FileHeader {
    /// Bytes per page.
    page_size: usize,
    /// Bytes of each page that b-trees use: the page size less the reserved bytes.
    usable: usize,
    /// Pages in the database.
    db_pages: u32,
    /// The first freelist trunk page (0: none).
    first_trunk: u32,
    /// Pages on the freelist, trunks included.
    free_pages: u32,
}

/// Reads and checks the file header; `None` (with the reason in `problems`, unless the
/// file is empty, which SQLite takes as an empty database) when the pages cannot be
/// found from it.
fn read_file_header(file: &File, problems: &mut Vec<String>) -> io::Result<Option<FileHeader>> {
    let file_len = file.metadata()?.len();
    if file_len == 0 {
        return Ok(None);
    }
    let mut bytes = [0u8; FILE_HEADER_LEN];
    if file_len < FILE_HEADER_LEN as u64 {
        problems.push(format!(
            "page 1 (file header): the file is {file_len} bytes, shorter than its 100-byte header"
        ));
        return Ok(None);
    }
    file.read_exact_at(&mut bytes, 0)?;
    Ok(FileHeader::parse(&bytes, file_len, problems))
}

impl FileHeader {
    /// The header's fields, checked against one another and the file's length.
    fn parse(
        bytes: &[u8; FILE_HEADER_LEN],
        file_len: u64,
        problems: &mut Vec<String>,
    ) -> Option<Self> {
        let field = |at: usize| be32(bytes, at).unwrap_or(0);
        if &bytes[..MAGIC.len()] != MAGIC {
            problems
                .push("page 1 (file header): not a SQLite 3 database (wrong magic string)".into());
            return None;
        }
        let page_size = match be16(bytes, 16).unwrap_or(0) {
            1 => 65536,
            n if n.is_power_of_two() && (512..=32768).contains(&n) => n,
            n => {
                problems.push(format!(
                    "page 1 (file header): page size {n} is not a power of two from 512 to 65536"
                ));
                return None;
            }
        };
        let usable = page_size - usize::from(bytes[20]);
        if usable < MIN_USABLE_SIZE {
            problems.push(format!(
                "page 1 (file header): {} reserved bytes leave {usable} usable bytes per page, under {MIN_USABLE_SIZE}",
                bytes[20]
            ));
            return None;
        }
        if bytes[21..24] != [64, 32, 32] {
            problems.push(format!(
                "page 1 (file header): payload fractions {:?}, not [64, 32, 32]",
                &bytes[21..24]
            ));
        }
        if !file_len.is_multiple_of(page_size as u64) {
            problems.push(format!(
                "page 1 (file header): the file's {file_len} bytes are not a whole number of {page_size}-byte pages"
            ));
        }
        let file_pages = u32::try_from(file_len / page_size as u64).unwrap_or(u32::MAX);
        let header_pages = field(28);
        let header_pages_valid = header_pages != 0 && field(24) == field(92);
        let db_pages = if !header_pages_valid {
            file_pages
        } else if header_pages > file_pages {
            problems.push(format!(
                "page 1 (file header): the database is {header_pages} pages, but the file holds {file_pages}"
            ));
            file_pages
        } else {
            header_pages
        };
        Some(Self {
            page_size,
            usable,
            db_pages,
            first_trunk: field(32),
            free_pages: field(36),
        })
    }

    /// Why `page` cannot be part of the database (`None`: it can).
    fn unusable(&self, page: u32) -> Option<String> {
        if page == 0 || page > self.db_pages {
            Some(format!(
                "outside the database's pages 1..={}",
                self.db_pages
            ))
        } else if u64::from(page) == LOCK_BYTE_OFFSET / self.page_size as u64 + 1 {
            Some("the lock-byte page, which SQLite never uses".into())
        } else {
            None
        }
    }

    /// The most payload a cell keeps on its page before spilling to overflow pages.
    fn max_local(&self, tree: TreeKind) -> usize {
        match tree {
            TreeKind::Table => self.usable - 35,
            TreeKind::Index => (self.usable - 12) * 64 / 255 - 23,
        }
    }

    /// The least payload a cell that spills keeps on its page.
    fn min_local(&self) -> usize {
        (self.usable - 12) * 32 / 255 - 23
    }

    /// How much of a `payload`-byte payload a cell of a `tree` page keeps on the page,
    /// and how many overflow pages hold the rest (SQLite's rule).
    fn local_payload(&self, tree: TreeKind, payload: u64) -> (usize, u64) {
        let max_local = self.max_local(tree) as u64;
        if payload <= max_local {
            return (payload as usize, 0);
        }
        let min_local = self.min_local() as u64;
        let per_overflow_page = self.usable as u64 - 4;
        let surplus = min_local + (payload - min_local) % per_overflow_page;
        let local = if surplus <= max_local {
            surplus
        } else {
            min_local
        };
        (
            local as usize,
            (payload - local).div_ceil(per_overflow_page),
        )
    }
}

/// Whether a b-tree holds a table (keyed by rowid) or an index (or a WITHOUT ROWID table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TreeKind {
    Table,
    Index,
}

/// Whether a b-tree page has children.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Interior,
    Leaf,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Interior => "interior",
            Level::Leaf => "leaf",
        })
    }
}

/// The kind of a b-tree page, as its type byte says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PageKind {
    tree: TreeKind,
    level: Level,
}

impl PageKind {
    /// The kind a page type byte names (`None`: not a b-tree page).
    fn from_type_byte(byte: u8) -> Option<Self> {
        let (tree, level) = match byte {
            2 => (TreeKind::Index, Level::Interior),
            5 => (TreeKind::Table, Level::Interior),
            10 => (TreeKind::Index, Level::Leaf),
            13 => (TreeKind::Table, Level::Leaf),
            _ => return None,
        };
        Some(Self { tree, level })
    }

    /// The length of the b-tree page header (interior pages add the right child).
    fn header_len(self) -> usize {
        match self.level {
            Level::Interior => 12,
            Level::Leaf => 8,
        }
    }
}

impl fmt::Display for PageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tree = match self.tree {
            TreeKind::Table => "table",
            TreeKind::Index => "index",
        };
        write!(f, "{tree} {}", self.level)
    }
}

/// A b-tree to walk: sqlite_schema's own, or one that a row of it names.
#[derive(Debug)]
struct Tree {
    /// How problems name it: its schema type and name (`table accounts`).
    description: String,
    kind: TreeKind,
    root: u32,
}

/// The b-trees of the database: sqlite_schema's (page 1) and each that it lists. If
/// sqlite_schema cannot be read, that is a problem and only page 1's tree is walked.
fn schema_trees(db: &Path, problems: &mut Vec<String>) -> Vec<Tree> {
    let mut trees = vec![Tree {
        description: "table sqlite_schema".into(),
        kind: TreeKind::Table,
        root: 1,
    }];
    let rows = match read_schema_roots(db) {
        Ok(rows) => rows,
        Err(e) => {
            problems.push(format!(
                "sqlite_schema: cannot be read ({e}), so only its own b-tree is walked"
            ));
            return trees;
        }
    };
    for (description, kind, root) in rows {
        match u32::try_from(root) {
            Ok(root) => trees.push(Tree {
                description,
                kind,
                root,
            }),
            Err(_) => problems.push(format!(
                "sqlite_schema: the root page of {description} is {root}, not a page number"
            )),
        }
    }
    trees
}

/// Each b-tree sqlite_schema lists: its description, kind and root page, read through
/// SQLite itself (the file opened read-only and immutable: it is not in use).
fn read_schema_roots(db: &Path) -> rusqlite::Result<Vec<(String, TreeKind, i64)>> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(sqlite_uri(db, "mode=ro&immutable=1"), flags)?;
    let without_rowid: HashSet<String> = conn
        .prepare("SELECT name FROM pragma_table_list WHERE schema = 'main' AND wr")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut rows = conn.prepare(
        "SELECT type, name, rootpage FROM sqlite_schema \
         WHERE type IN ('table', 'index') AND rootpage IS NOT 0 ORDER BY rootpage",
    )?;
    let roots = rows.query_map([], |row| {
        let schema_type: String = row.get(0)?;
        let name: String = row.get(1)?;
        let root: i64 = row.get(2)?;
        let kind = if schema_type == "index" || without_rowid.contains(&name) {
            TreeKind::Index
        } else {
            TreeKind::Table
        };
        Ok((format!("{schema_type} {name}"), kind, root))
    })?;
    roots.collect()
}

/// How a problem names a page: its number, its tree, and its level when known.
#[derive(Clone, Copy)]
struct PageLabel<'t> {
    page: u32,
    tree: &'t Tree,
    level: Option<Level>,
}

impl fmt::Display for PageLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "page {} ({}", self.page, self.tree.description)?;
        match self.level {
            Some(level) => write!(f, ", {level})"),
            None => f.write_str(")"),
        }
    }
}

/// Which pointer of an interior page leads to a child.
#[derive(Clone, Copy, Debug)]
enum ChildPosition {
    /// The left child in cell N.
    Cell(usize),
    /// The right-most child, in the page header.
    Right,
}

/// What points to a page the walk reaches.
enum Referrer<'t> {
    /// sqlite_schema, naming the tree's root.
    Schema(&'t Tree),
    /// An interior page of the tree.
    Child {
        parent: PageLabel<'t>,
        position: ChildPosition,
    },
}

impl fmt::Display for Referrer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Referrer::Schema(tree) => write!(f, "sqlite_schema: the root of {}", tree.description),
            Referrer::Child {
                parent,
                position: ChildPosition::Cell(i),
            } => {
                write!(f, "{parent}: the child in cell {i}")
            }
            Referrer::Child {
                parent,
                position: ChildPosition::Right,
            } => {
                write!(f, "{parent}: the right child")
            }
        }
    }
}

/// The rowids a table b-tree page may hold, from its ancestors' keys: above `above`, at
/// most `at_most` (`None`: unbounded).
#[derive(Clone, Copy, Debug, Default)]
struct RowidBounds {
    above: Option<i64>,
    at_most: Option<i64>,
}

/// A child page an interior page points to, and the rowids it may hold.
#[derive(Clone, Copy, Debug)]
struct Child {
    page: u32,
    position: ChildPosition,
    bounds: RowidBounds,
}

/// A set of page numbers, one bit a page.
struct PageSet {
    words: Vec<u64>,
}

impl PageSet {
    /// An empty set for pages up to `pages`.
    fn for_pages(pages: u32) -> Self {
        Self {
            words: vec![0; pages as usize / 64 + 1],
        }
    }

    fn contains(&self, page: u32) -> bool {
        self.words
            .get(page as usize / 64)
            .is_some_and(|word| word & (1 << (page % 64)) != 0)
    }

    /// Adds `page`; false if it was there already (or is beyond the set's pages).
    fn insert(&mut self, page: u32) -> bool {
        let Some(word) = self.words.get_mut(page as usize / 64) else {
            return false;
        };
        let bit = 1 << (page % 64);
        let new = *word & bit == 0;
        *word |= bit;
        new
    }
}

/// Reads whole pages of the database into one reusable buffer, counting the reads.
struct PageReader {
    file: File,
    buffer: Vec<u8>,
    reads: u64,
}

impl PageReader {
    fn new(file: File, page_size: usize) -> Self {
        Self {
            file,
            buffer: vec![0; page_size],
            reads: 0,
        }
    }

    /// Page `page` (1-based, within the file).
    fn read(&mut self, page: u32) -> io::Result<&[u8]> {
        let offset = u64::from(page.saturating_sub(1)) * self.buffer.len() as u64;
        self.file
            .read_exact_at(&mut self.buffer, offset)
            .map_err(|e| io::Error::new(e.kind(), format!("reading page {page}: {e}")))?;
        self.reads += 1;
        Ok(&self.buffer)
    }
}

/// A checked cell's first overflow page, kept for the checks against the trees, the
/// freelist and the other checked cells once all are walked.
struct OverflowHead {
    /// The page the cell is on.
    on_page: u32,
    /// That page, as problems name it.
    label: String,
    /// The cell's place on that page.
    cell: usize,
    /// The first overflow page.
    page: u32,
}

/// The walk of the freelist and the b-trees, and what it has found so far.
struct Walk<'a> {
    pages: PageReader,
    header: FileHeader,
    changed: &'a BTreeSet<u32>,
    /// Every page some b-tree points to (read or not).
    in_tree: PageSet,
    /// Every freelist page, trunks and leaves.
    free: PageSet,
    /// First overflow pages of the checked pages' cells.
    overflow_heads: Vec<OverflowHead>,
    problems: Vec<String>,
}

impl<'a> Walk<'a> {
    fn new(
        file: File,
        header: FileHeader,
        changed: &'a BTreeSet<u32>,
        problems: Vec<String>,
    ) -> Self {
        Self {
            pages: PageReader::new(file, header.page_size),
            header,
            changed,
            in_tree: PageSet::for_pages(header.db_pages),
            free: PageSet::for_pages(header.db_pages),
            overflow_heads: Vec::new(),
            problems,
        }
    }

    /// Walks the freelist's trunk chain, marking every page it lists free.
    fn freelist(&mut self) -> io::Result<()> {
        let leaves_per_trunk = self.header.usable / 4 - 2;
        let mut listed = 0u64;
        let mut trunk = self.header.first_trunk;
        let mut referrer = String::from("page 1 (file header): the first freelist trunk");
        while trunk != 0 && self.mark_free(trunk, &referrer) {
            listed += 1;
            let image = self.pages.read(trunk)?;
            let next = be32(image, 0).unwrap_or(0);
            let leaf_count = be32(image, 4).unwrap_or(0) as usize;
            let leaves: Vec<u32> = if leaf_count <= leaves_per_trunk {
                (0..leaf_count)
                    .filter_map(|i| be32(image, 8 + 4 * i))
                    .collect()
            } else {
                self.problems.push(format!(
                    "page {trunk} (freelist trunk): lists {leaf_count} leaves, more than the \
                     {leaves_per_trunk} a trunk holds"
                ));
                Vec::new()
            };
            listed += leaves.len() as u64;
            for (i, leaf) in leaves.into_iter().enumerate() {
                self.mark_free(
                    leaf,
                    format_args!("page {trunk} (freelist trunk): leaf {i}"),
                );
            }
            referrer = format!("page {trunk} (freelist trunk): the next trunk");
            trunk = next;
        }
        if listed != u64::from(self.header.free_pages) {
            self.problems.push(format!(
                "page 1 (file header): the freelist count is {}, but the trunk chain lists \
                 {listed} pages",
                self.header.free_pages
            ));
        }
        Ok(())
    }

    /// Marks `page` free; false (a problem) if it cannot be or is already.
    fn mark_free(&mut self, page: u32, referrer: impl fmt::Display) -> bool {
        let why_not = match self.header.unusable(page) {
            Some(why_not) => why_not,
            None if self.free.insert(page) => return true,
            None => "already on the freelist".into(),
        };
        self.problems
            .push(format!("{referrer} is page {page}, {why_not}"));
        false
    }

    /// Walks `tree` from its root down its interior pages, checking the changed pages.
    fn tree(&mut self, tree: &Tree) -> io::Result<()> {
        if !self.claim(tree.root, Referrer::Schema(tree)) {
            return Ok(());
        }
        let mut leaf_depth = None;
        self.visit(tree, tree.root, 0, RowidBounds::default(), &mut leaf_depth)
    }

    /// Marks `page` part of a b-tree; false (a problem) if it cannot be or is already. A
    /// page also on the freelist is a problem, but is walked all the same.
    fn claim(&mut self, page: u32, referrer: Referrer<'_>) -> bool {
        let why_not = match self.header.unusable(page) {
            Some(why_not) => why_not,
            None if self.in_tree.insert(page) => {
                if self.free.contains(page) {
                    self.problems.push(format!(
                        "{referrer} is page {page}, which is also on the freelist"
                    ));
                }
                return true;
            }
            None => "already reached (a cycle, or a page in two b-trees)".into(),
        };
        self.problems
            .push(format!("{referrer} is page {page}, {why_not}"));
        false
    }

    /// Visits `page`, at `depth` below its tree's root: reads it if it is above the leaf
    /// level or changed, checks it if changed, and visits its children. `leaf_depth` is the
    /// tree's leaf level once known: the walk goes down the leftmost path first, and the
    /// first leaf it reads there gives it.
    fn visit(
        &mut self,
        tree: &Tree,
        page: u32,
        depth: usize,
        bounds: RowidBounds,
        leaf_depth: &mut Option<usize>,
    ) -> io::Result<()> {
        let changed = self.changed.contains(&page);
        let level = leaf_depth.map(|leaf| {
            if depth < leaf {
                Level::Interior
            } else {
                Level::Leaf
            }
        });
        if level == Some(Level::Leaf) && !changed {
            return Ok(());
        }
        let label = PageLabel { page, tree, level };
        let image = self.pages.read(page)?;
        let examined = examine_page(image, label, bounds, &self.header, changed);
        self.problems.extend(examined.problems);
        self.overflow_heads.extend(examined.overflow_heads);
        if leaf_depth.is_none() && examined.level == Some(Level::Leaf) {
            *leaf_depth = Some(depth);
        }
        if examined.children.is_empty() {
            return Ok(());
        }
        let label = PageLabel {
            level: examined.level,
            ..label
        };
        if depth + 1 >= MAX_TREE_DEPTH {
            self.problems.push(format!(
                "{label}: the tree is deeper than {MAX_TREE_DEPTH} levels"
            ));
            return Ok(());
        }
        for child in examined.children {
            let referrer = Referrer::Child {
                parent: label,
                position: child.position,
            };
            if self.claim(child.page, referrer) {
                self.visit(tree, child.page, depth + 1, child.bounds, leaf_depth)?;
            }
        }
        Ok(())
    }

    /// Checks that no checked cell's first overflow page is a b-tree page, a free page,
    /// or another checked cell's.
    fn check_overflow_heads(&mut self) {
        let mut owners: HashMap<u32, (u32, usize)> = HashMap::new();
        for head in std::mem::take(&mut self.overflow_heads) {
            let conflict = if self.in_tree.contains(head.page) {
                "a b-tree page".to_string()
            } else if self.free.contains(head.page) {
                "on the freelist".to_string()
            } else if let Some((page, cell)) = owners.get(&head.page) {
                format!("also the first overflow page of cell {cell} on page {page}")
            } else {
                owners.insert(head.page, (head.on_page, head.cell));
                continue;
            };
            self.problems.push(format!(
                "{}: cell {}: its first overflow page {} is {conflict}",
                head.label, head.cell, head.page
            ));
        }
    }

    /// The result, once the freelist and every tree are walked: the checked cells' first
    /// overflow pages checked, and the changed pages counted by where the walk found them.
    fn finish(mut self) -> PageCheck {
        self.check_overflow_heads();
        let mut result = PageCheck {
            pages_read: self.pages.reads,
            problems: self.problems,
            ..PageCheck::default()
        };
        for &page in self.changed {
            if self.in_tree.contains(page) {
                result.checked += 1;
            } else if self.free.contains(page) {
                result.free += 1;
            } else {
                result.unchecked += 1;
            }
        }
        result
    }
}

/// What examining one page gives the walk.
#[derive(Default)]
struct Examined {
    /// The page's level, if its type is what its place calls for.
    level: Option<Level>,
    /// Its children, if it is an interior page.
    children: Vec<Child>,
    /// The first overflow pages of its cells, if it was checked.
    overflow_heads: Vec<OverflowHead>,
    problems: Vec<String>,
}

/// Examines one b-tree page, `image`, at the place `label` names. Every page's type is
/// checked against its place; an interior page's cells are read for its children; and
/// a changed page (`full`) is checked throughout.
fn examine_page(
    image: &[u8],
    label: PageLabel<'_>,
    bounds: RowidBounds,
    file: &FileHeader,
    full: bool,
) -> Examined {
    let mut examined = Examined::default();
    let header_offset = if label.page == 1 { FILE_HEADER_LEN } else { 0 };
    let header = match PageHeader::parse(image, header_offset) {
        Ok(header) => header,
        Err(what) => {
            examined.problems.push(format!("{label}: {what}"));
            return examined;
        }
    };
    let expected = PageKind {
        tree: label.tree.kind,
        level: label.level.unwrap_or(header.kind.level),
    };
    if header.kind != expected {
        examined.problems.push(format!(
            "{label}: page type {} ({}) where its place in the tree calls for {expected}",
            header.type_byte, header.kind
        ));
        return examined;
    }
    examined.level = Some(expected.level);
    if !full && expected.level == Level::Leaf {
        return examined;
    }
    let label = PageLabel {
        level: Some(expected.level),
        ..label
    };
    let problems = &mut examined.problems;
    let layout_ok = check_layout(&header, file, label, problems);
    let cells = read_cells(image, &header, file);
    for (i, cell) in cells.iter().enumerate() {
        if let Err(what) = cell {
            problems.push(format!("{label}: cell {i} {what}"));
        }
    }
    if full {
        check_fragments(&header, label, problems);
        let freeblocks = read_freeblocks(image, &header, file.usable);
        if let Err(what) = &freeblocks {
            problems.push(format!("{label}: {what}"));
        }
        if let (true, Ok(freeblocks)) = (layout_ok, &freeblocks) {
            check_coverage(&header, &cells, freeblocks, file.usable, label, problems);
        }
        check_rowids(&cells, bounds, label, problems);
        examined.overflow_heads = check_overflow(&cells, file, label, problems);
    }
    if let Some(right_child) = header.right_child {
        examined.children = children(&cells, right_child, bounds);
    }
    examined
}

/// A b-tree page's header.
struct PageHeader {
    /// Where it starts: 100 on page 1, 0 elsewhere.
    offset: usize,
    type_byte: u8,
    kind: PageKind,
    first_freeblock: usize,
    cell_count: usize,
    /// Where the cell content area starts (0 in the header means 65536).
    content_start: usize,
    fragmented: usize,
    /// The right-most child (interior pages).
    right_child: Option<u32>,
}

impl PageHeader {
    fn parse(image: &[u8], offset: usize) -> Result<Self, String> {
        let past_page = || "the page header lies past the page".to_string();
        let type_byte = *image.get(offset).ok_or_else(past_page)?;
        let kind = PageKind::from_type_byte(type_byte)
            .ok_or_else(|| format!("page type {type_byte} is not a b-tree page type"))?;
        let field = |at: usize| be16(image, offset + at).ok_or_else(past_page);
        let right_child = match kind.level {
            Level::Interior => Some(be32(image, offset + 8).ok_or_else(past_page)?),
            Level::Leaf => None,
        };
        Ok(Self {
            offset,
            type_byte,
            kind,
            first_freeblock: field(1)?,
            cell_count: field(3)?,
            content_start: match field(5)? {
                0 => 65536,
                start => start,
            },
            fragmented: usize::from(*image.get(offset + 7).ok_or_else(past_page)?),
            right_child,
        })
    }

    /// Where the cell pointer array starts.
    fn pointers_start(&self) -> usize {
        self.offset + self.kind.header_len()
    }

    /// Where the cell pointer array ends.
    fn pointers_end(&self) -> usize {
        self.pointers_start() + 2 * self.cell_count
    }
}

/// Checks that the cell content area starts within the usable size, and that the cell
/// count's pointer array ends before it; false (with problems) if not.
fn check_layout(
    header: &PageHeader,
    file: &FileHeader,
    label: PageLabel<'_>,
    problems: &mut Vec<String>,
) -> bool {
    let mut ok = true;
    if header.content_start > file.usable {
        problems.push(format!(
            "{label}: the cell content area starts at offset {}, past the usable size {}",
            header.content_start, file.usable
        ));
        ok = false;
    }
    if header.pointers_end() > header.content_start.min(file.usable) {
        problems.push(format!(
            "{label}: the cell pointer array of {} cells ends at offset {}, past the start of \
             the cell content area at {}",
            header.cell_count,
            header.pointers_end(),
            header.content_start
        ));
        ok = false;
    }
    ok
}

/// Checks the header's count of fragmented bytes against the most a page may have.
fn check_fragments(header: &PageHeader, label: PageLabel<'_>, problems: &mut Vec<String>) {
    if header.fragmented > MAX_FRAGMENTED_BYTES {
        problems.push(format!(
            "{label}: {} fragmented bytes, more than the {MAX_FRAGMENTED_BYTES} a well-formed page has",
            header.fragmented
        ));
    }
}

/// A cell of a b-tree page, parsed.
#[derive(Debug)]
struct Cell {
    /// Where it starts on the page.
    offset: usize,
    /// Its length on the page (at least 4, as SQLite counts it).
    size: usize,
    /// The child before it (interior pages).
    left_child: Option<u32>,
    /// Its key (table pages).
    rowid: Option<i64>,
    /// Where the payload that does not fit on the page goes.
    overflow: Option<Overflow>,
}

/// A cell's overflow chain, as far as the cell tells.
#[derive(Debug)]
struct Overflow {
    first_page: u32,
    /// Pages the chain needs for the payload's remainder.
    pages: u64,
    /// The whole payload's length.
    payload: u64,
}

/// Each cell of the page, or what is wrong with it (as "cell N" would continue), for as
/// many cells as the pointer array holds within the usable size.
fn read_cells(image: &[u8], header: &PageHeader, file: &FileHeader) -> Vec<Result<Cell, String>> {
    let pointers_fitting = file.usable.saturating_sub(header.pointers_start()) / 2;
    (0..header.cell_count.min(pointers_fitting))
        .map(|i| {
            let offset = be16(image, header.pointers_start() + 2 * i).unwrap_or(0);
            let last_start = file.usable - 4;
            if offset < header.content_start || offset > last_start {
                return Err(format!(
                    "points to offset {offset}, outside the cell content area {}..={last_start}",
                    header.content_start
                ));
            }
            parse_cell(image, offset, header.kind, file)
                .map_err(|what| format!("at offset {offset} {what}"))
        })
        .collect()
}

/// Parses the cell at `offset` (within the cell content area) of a `kind` page.
fn parse_cell(
    image: &[u8],
    offset: usize,
    kind: PageKind,
    file: &FileHeader,
) -> Result<Cell, String> {
    let usable = file.usable;
    let runs_past = || format!("runs past the usable size {usable}");
    let mut fields = CellFields {
        image,
        at: offset,
        end: usable,
    };
    let left_child = match kind.level {
        Level::Interior => Some(fields.page_number().ok_or_else(runs_past)?),
        Level::Leaf => None,
    };
    let (payload, rowid) = match (kind.tree, kind.level) {
        (TreeKind::Table, Level::Interior) => (None, Some(fields.varint().ok_or_else(runs_past)?)),
        (TreeKind::Table, Level::Leaf) => {
            let payload = fields.varint().ok_or_else(runs_past)?;
            (Some(payload), Some(fields.varint().ok_or_else(runs_past)?))
        }
        (TreeKind::Index, _) => (Some(fields.varint().ok_or_else(runs_past)?), None),
    };
    let (local, overflow_pages) =
        payload.map_or((0, 0), |payload| file.local_payload(kind.tree, payload));
    let overflow_pointer_len = if overflow_pages > 0 { 4 } else { 0 };
    let size = (fields.at - offset + local + overflow_pointer_len).max(4);
    if offset + size > usable {
        return Err(format!(
            "extends past the usable size {usable} (it is {size} bytes)"
        ));
    }
    let overflow = match payload {
        Some(payload) if overflow_pages > 0 => Some(Overflow {
            first_page: be32(image, offset + size - 4).ok_or_else(runs_past)?,
            pages: overflow_pages,
            payload,
        }),
        _ => None,
    };
    Ok(Cell {
        offset,
        size,
        left_child,
        rowid: rowid.map(|key| key as i64),
        overflow,
    })
}

/// Reads a cell's leading fields in order, none past `end`.
struct CellFields<'i> {
    image: &'i [u8],
    at: usize,
    end: usize,
}

impl CellFields<'_> {
    fn page_number(&mut self) -> Option<u32> {
        let value = be32(self.image.get(..self.end)?, self.at)?;
        self.at += 4;
        Some(value)
    }

    fn varint(&mut self) -> Option<u64> {
        let (value, len) = read_varint(self.image.get(..self.end)?, self.at)?;
        self.at += len;
        Some(value)
    }
}

/// A run of a page's bytes that a cell or a freeblock takes.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    /// One past its last byte.
    end: usize,
    owner: SpanOwner,
}

/// What takes a span of a page.
#[derive(Clone, Copy, Debug)]
enum SpanOwner {
    Cell(usize),
    Freeblock,
}

impl fmt::Display for SpanOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpanOwner::Cell(i) => write!(f, "cell {i}"),
            SpanOwner::Freeblock => f.write_str("a freeblock"),
        }
    }
}

/// The page's freeblocks, following the chain from the header as
/// `btreeComputeFreeSpace` does: each within the cell content area and the usable size,
/// at least 4 bytes, and each next one at least 4 bytes past the end of the one before.
fn read_freeblocks(image: &[u8], header: &PageHeader, usable: usize) -> Result<Vec<Span>, String> {
    let mut freeblocks = Vec::new();
    let mut at = header.first_freeblock;
    if at != 0 && at < header.content_start {
        return Err(format!(
            "the first freeblock, at offset {at}, lies before the cell content area at {}",
            header.content_start
        ));
    }
    while at != 0 {
        let (Some(next), Some(size)) = (be16(image, at), be16(image, at + 2)) else {
            return Err(format!("the freeblock at offset {at} lies past the page"));
        };
        if at > usable - 4 || at + size > usable {
            return Err(format!(
                "the freeblock at offset {at} ({size} bytes) extends past the usable size {usable}"
            ));
        }
        if size < 4 {
            return Err(format!(
                "the freeblock at offset {at} is {size} bytes, under 4"
            ));
        }
        freeblocks.push(Span {
            start: at,
            end: at + size,
            owner: SpanOwner::Freeblock,
        });
        if next != 0 && next <= at {
            return Err(format!(
                "the freeblock chain goes backwards: the freeblock at offset {at} links to {next}"
            ));
        }
        if next != 0 && next < at + size + 4 {
            return Err(format!(
                "the freeblock at offset {at} ({size} bytes) links to offset {next}, less than \
                 4 bytes past its end"
            ));
        }
        at = next;
    }
    Ok(freeblocks)
}

/// Checks that every byte of the usable size is accounted for exactly once, as
/// `checkTreePage` does: the header, the cell pointer array and the gap after it up to
/// the cell content area; then the cells, freeblocks and fragments, which must be the
/// header's count of fragmented bytes. Only when every cell could be read.
fn check_coverage(
    header: &PageHeader,
    cells: &[Result<Cell, String>],
    freeblocks: &[Span],
    usable: usize,
    label: PageLabel<'_>,
    problems: &mut Vec<String>,
) {
    let mut spans = Vec::with_capacity(cells.len() + freeblocks.len());
    for (i, cell) in cells.iter().enumerate() {
        let Ok(cell) = cell else { return };
        spans.push(Span {
            start: cell.offset,
            end: cell.offset + cell.size,
            owner: SpanOwner::Cell(i),
        });
    }
    spans.extend_from_slice(freeblocks);
    spans.sort_by_key(|span| span.start);
    let mut covered_to = header.content_start;
    let mut unclaimed = 0;
    let mut previous: Option<Span> = None;
    for span in spans {
        if let Some(previous) = previous.filter(|previous| span.start < previous.end) {
            problems.push(format!(
                "{label}: {} at offset {} overlaps {} (bytes {}..{})",
                span.owner, span.start, previous.owner, previous.start, previous.end
            ));
            return;
        }
        unclaimed += span.start.saturating_sub(covered_to);
        covered_to = span.end;
        previous = Some(span);
    }
    unclaimed += usable.saturating_sub(covered_to);
    if unclaimed != header.fragmented {
        problems.push(format!(
            "{label}: {unclaimed} bytes of the cell content area are in no cell or freeblock, \
             but the header counts {} fragmented bytes",
            header.fragmented
        ));
    }
}

/// Checks that a table page's rowids ascend strictly and lie within the bounds its
/// parent's keys set.
fn check_rowids(
    cells: &[Result<Cell, String>],
    bounds: RowidBounds,
    label: PageLabel<'_>,
    problems: &mut Vec<String>,
) {
    let mut previous: Option<(usize, i64)> = None;
    for (i, cell) in cells.iter().enumerate() {
        let Some(rowid) = cell.as_ref().ok().and_then(|cell| cell.rowid) else {
            continue;
        };
        let wrong = match (previous, bounds.above, bounds.at_most) {
            (Some((j, before)), _, _) if rowid <= before => {
                Some(format!("is not above rowid {before} of cell {j}"))
            }
            (_, Some(above), _) if rowid <= above => Some(format!(
                "is not above {above}, the lower bound its parent sets"
            )),
            (_, _, Some(at_most)) if rowid > at_most => Some(format!(
                "is above {at_most}, the upper bound its parent sets"
            )),
            _ => None,
        };
        if let Some(wrong) = wrong {
            problems.push(format!("{label}: cell {i}: rowid {rowid} {wrong}"));
        }
        previous = Some((i, rowid));
    }
}

/// Checks each cell's overflow chain as far as the cell tells: its first page in range,
/// and no more pages needed than the database has. Returns the first pages, to be checked
/// against the trees and the freelist once those are walked.
fn check_overflow(
    cells: &[Result<Cell, String>],
    file: &FileHeader,
    label: PageLabel<'_>,
    problems: &mut Vec<String>,
) -> Vec<OverflowHead> {
    let mut heads = Vec::new();
    for (i, cell) in cells.iter().enumerate() {
        let Some(overflow) = cell.as_ref().ok().and_then(|cell| cell.overflow.as_ref()) else {
            continue;
        };
        if overflow.pages > u64::from(file.db_pages) {
            problems.push(format!(
                "{label}: cell {i}: its payload of {} bytes needs {} overflow pages, more than the \
                 database's {} pages",
                overflow.payload, overflow.pages, file.db_pages
            ));
        }
        match file.unusable(overflow.first_page) {
            Some(why_not) => problems.push(format!(
                "{label}: cell {i}: its first overflow page is page {}, {why_not}",
                overflow.first_page
            )),
            None => heads.push(OverflowHead {
                on_page: label.page,
                label: label.to_string(),
                cell: i,
                page: overflow.first_page,
            }),
        }
    }
    heads
}

/// The children of an interior page, in order, with the rowid bounds each inherits: the
/// child of cell i holds rowids above cell i−1's key and at most cell i's; the right
/// child, those above the last key. A cell that could not be read gives no child.
fn children(cells: &[Result<Cell, String>], right_child: u32, bounds: RowidBounds) -> Vec<Child> {
    let mut children = Vec::with_capacity(cells.len() + 1);
    let mut above = bounds.above;
    for (i, cell) in cells.iter().enumerate() {
        let Ok(cell) = cell else { continue };
        let Some(page) = cell.left_child else {
            continue;
        };
        let at_most = cell.rowid.or(bounds.at_most);
        children.push(Child {
            page,
            position: ChildPosition::Cell(i),
            bounds: RowidBounds { above, at_most },
        });
        above = cell.rowid.or(above);
    }
    children.push(Child {
        page: right_child,
        position: ChildPosition::Right,
        bounds: RowidBounds {
            above,
            at_most: bounds.at_most,
        },
    });
    children
}

/// The big-endian 2-byte integer at `at`.
fn be16(bytes: &[u8], at: usize) -> Option<usize> {
    let field = bytes.get(at..at.checked_add(2)?)?;
    Some(usize::from(u16::from_be_bytes([field[0], field[1]])))
}

/// The big-endian 4-byte integer at `at`.
fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let field = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([field[0], field[1], field[2], field[3]]))
}

/// The SQLite varint at `at` (1 to 9 bytes: seven bits a byte while the high bit is set,
/// all eight of the ninth) and its length; `None` if it runs past `bytes`.
fn read_varint(bytes: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for len in 1..=9 {
        let byte = *bytes.get(at + len - 1)?;
        if len == 9 {
            return Some(((value << 8) | u64::from(byte), len));
        }
        value = (value << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Some((value, len));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use rusqlite::params;

    use super::*;

    const PAGE_SIZE: usize = 4096;

    /// The test database in `dir`: 20,000 accounts (every 250th with a note larger than a
    /// page, so overflow pages) indexed by name, a WITHOUT ROWID table (an index b-tree),
    /// then a run of accounts deleted (a non-empty freelist) and every 7th (freeblocks).
    fn build_database(dir: &Path) -> PathBuf {
        let path = dir.join("test.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA page_size = 4096;
             PRAGMA journal_mode = DELETE;
             CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                                    balance INTEGER NOT NULL, note BLOB NOT NULL);
             CREATE INDEX accounts_by_name ON accounts (name);
             CREATE TABLE tags (tag TEXT PRIMARY KEY, uses INTEGER) WITHOUT ROWID;",
        )
        .unwrap();
        let tx = conn.transaction().unwrap();
        for id in 1..=20_000u32 {
            let note_len = if id % 250 == 0 { 10_000 } else { 300 };
            tx.execute(
                "INSERT INTO accounts VALUES (?1, ?2, ?3, ?4)",
                params![
                    id,
                    format!("holder {:08}", id * 7919 % 20_011),
                    id * 3,
                    vec![id as u8; note_len]
                ],
            )
            .unwrap();
        }
        for tag in 0..2_000u32 {
            tx.execute(
                "INSERT INTO tags VALUES (?1, ?2)",
                params![format!("tag-{tag:05}"), tag],
            )
            .unwrap();
        }
        tx.execute_batch(
            "DELETE FROM accounts WHERE id BETWEEN 6001 AND 9000;
             DELETE FROM accounts WHERE id % 7 = 0;",
        )
        .unwrap();
        tx.commit().unwrap();
        path
    }

    fn read_only(db: &Path) -> Connection {
        Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
    }

    /// Each page of the database's b-trees as SQLite's dbstat sees it: the tree's name,
    /// the page, and its type ("internal", "leaf" or "overflow").
    fn dbstat(db: &Path) -> Vec<(String, u32, String)> {
        let conn = read_only(db);
        let mut pages = conn
            .prepare("SELECT name, pageno, pagetype FROM dbstat ORDER BY path")
            .unwrap();
        let rows = pages
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    /// The pages of `tree` of `page_type`, in tree order.
    fn pages_of(db: &Path, tree: &str, page_type: &str) -> Vec<u32> {
        dbstat(db)
            .into_iter()
            .filter(|(name, _, kind)| name == tree && kind == page_type)
            .map(|(_, page, _)| page)
            .collect()
    }

    fn pragma(db: &Path, name: &str) -> u32 {
        read_only(db)
            .query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
            .unwrap()
    }

    /// What `PRAGMA integrity_check` says (an error from it is what it says too: SQLite
    /// stops at some corruption).
    fn integrity_check(db: &Path) -> Vec<String> {
        let conn = read_only(db);
        let rows = conn
            .prepare("PRAGMA integrity_check")
            .and_then(|mut check| {
                let rows = check.query_map([], |row| row.get(0))?;
                rows.collect::<rusqlite::Result<Vec<String>>>()
            });
        rows.unwrap_or_else(|e| vec![e.to_string()])
    }

    /// The pages of the freelist's trunk chain.
    fn freelist_trunks(db: &Path) -> u64 {
        let mut trunks = 0;
        let mut trunk = u32::from_be_bytes(page_bytes(db, 1)[32..36].try_into().unwrap());
        while trunk != 0 {
            trunks += 1;
            trunk = u32::from_be_bytes(page_bytes(db, trunk)[0..4].try_into().unwrap());
        }
        trunks
    }

    fn page_bytes(db: &Path, page: u32) -> Vec<u8> {
        let start = (page as usize - 1) * PAGE_SIZE;
        std::fs::read(db).unwrap()[start..start + PAGE_SIZE].to_vec()
    }

    /// A copy of `db` beside it, named `name`, with `edit` applied to page `page`.
    fn corrupted_copy(db: &Path, page: u32, name: &str, edit: impl Fn(&mut [u8])) -> PathBuf {
        let mut bytes = std::fs::read(db).unwrap();
        let start = (page as usize - 1) * PAGE_SIZE;
        edit(&mut bytes[start..start + PAGE_SIZE]);
        let copy = db.with_file_name(name);
        std::fs::write(&copy, bytes).unwrap();
        copy
    }

    fn get16(page: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([page[at], page[at + 1]])
    }

    fn put16(page: &mut [u8], at: usize, value: u16) {
        page[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }

    fn check(db: &Path, changed: impl IntoIterator<Item = u32>) -> PageCheck {
        check_changed_pages(db, &changed.into_iter().collect()).unwrap()
    }

    #[test]
    fn every_page_of_a_sound_database_passes_and_is_counted_where_dbstat_puts_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = build_database(dir.path());
        let page_count = pragma(&db, "page_count");
        let freelist_count = pragma(&db, "freelist_count");
        let stat = dbstat(&db);
        let tree_pages = stat
            .iter()
            .filter(|(_, _, kind)| kind != "overflow")
            .count() as u64;
        let overflow_pages = stat
            .iter()
            .filter(|(_, _, kind)| kind == "overflow")
            .count() as u64;
        assert!(
            freelist_count > 0 && overflow_pages > 0,
            "the database has free and overflow pages"
        );
        assert_eq!(integrity_check(&db), ["ok"]);

        let result = check(&db, 1..=page_count);

        assert_eq!(result.problems, Vec::<String>::new());
        assert_eq!(
            result.checked + result.free + result.unchecked,
            u64::from(page_count)
        );
        assert_eq!(result.checked, tree_pages);
        assert_eq!(result.free, u64::from(freelist_count));
        assert_eq!(result.unchecked, overflow_pages);
    }

    #[test]
    fn one_changed_leaf_reads_the_interior_pages_not_every_page() {
        let dir = tempfile::tempdir().unwrap();
        let db = build_database(dir.path());
        let page_count = pragma(&db, "page_count");
        let interior_pages = dbstat(&db)
            .iter()
            .filter(|(_, _, kind)| kind == "internal")
            .count() as u64;
        let trees = 1 + read_only(&db)
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE rootpage > 0",
                [],
                |row| row.get::<_, u32>(0),
            )
            .unwrap() as u64;
        let leaves = pages_of(&db, "accounts", "leaf");
        assert!(page_count > 2_000, "{page_count} pages");

        let result = check(&db, [leaves[leaves.len() / 2]]);

        assert_eq!(result.problems, Vec::<String>::new());
        assert_eq!((result.checked, result.free, result.unchecked), (1, 0, 0));
        // The interior pages, each tree's leftmost leaf (its height), the freelist's
        // trunks, the changed leaf.
        let trunks = freelist_trunks(&db);
        assert!(
            result.pages_read <= interior_pages + trees + trunks + 1,
            "{} pages read, {interior_pages} interior pages in {trees} trees, {trunks} trunks",
            result.pages_read
        );
        assert!(
            result.pages_read * 20 < u64::from(page_count),
            "{} of {page_count} pages read",
            result.pages_read
        );
    }

    /// An edit of a page's bytes.
    type PageEdit = Box<dyn Fn(&mut [u8])>;

    /// A corruption of one page: what it is, the page, the edit, and a phrase the problem
    /// it causes must contain.
    struct Corruption {
        what: &'static str,
        page: u32,
        edit: PageEdit,
        problem: String,
    }

    fn corruptions(db: &Path) -> Vec<Corruption> {
        let page_count = pragma(db, "page_count");
        let leaves = pages_of(db, "accounts", "leaf");
        let leaf = leaves[leaves.len() / 2];
        let leaf_with_freeblock = *leaves[1..]
            .iter()
            .find(|&&page| get16(&page_bytes(db, page), 1) != 0)
            .expect("a leaf with a freeblock");
        let interior = pages_of(db, "accounts", "internal")[0];
        let past_the_end = page_count + 100;
        vec![
            Corruption {
                what: "a cell pointer past the page",
                page: leaf,
                edit: Box::new(|page| put16(page, 8, 0xfff0)),
                problem: "cell 0 points to offset 65520, outside the cell content area".into(),
            },
            Corruption {
                what: "the cell count raised",
                page: leaf,
                edit: Box::new(|page| put16(page, 3, get16(page, 3) + 1)),
                problem: format!("cell {}", get16(&page_bytes(db, leaf), 3)),
            },
            Corruption {
                what: "two cells overlapping",
                page: leaf,
                edit: Box::new(|page| put16(page, 10, get16(page, 8))),
                problem: format!(
                    "cell 1 at offset {} overlaps cell 0",
                    get16(&page_bytes(db, leaf), 8)
                ),
            },
            Corruption {
                what: "a freeblock chain made descending",
                page: leaf_with_freeblock,
                edit: Box::new(|page| {
                    let first = usize::from(get16(page, 1));
                    put16(page, first, get16(page, 5));
                }),
                problem: "the freeblock chain goes backwards".into(),
            },
            Corruption {
                what: "the page type changed",
                page: leaf,
                edit: Box::new(|page| page[0] = 10),
                problem:
                    "page type 10 (index leaf) where its place in the tree calls for table leaf"
                        .into(),
            },
            Corruption {
                what: "rowids out of order",
                page: leaf,
                edit: Box::new(|page| {
                    let (first, second) = (get16(page, 8), get16(page, 10));
                    put16(page, 8, second);
                    put16(page, 10, first);
                }),
                problem: "cell 1: rowid".into(),
            },
            Corruption {
                what: "a child pointer past the database",
                page: interior,
                edit: Box::new(move |page| {
                    page[8..12].copy_from_slice(&past_the_end.to_be_bytes())
                }),
                problem: format!(
                    "the right child is page {past_the_end}, outside the database's pages 1..={page_count}"
                ),
            },
        ]
    }

    #[test]
    fn each_kind_of_corruption_in_a_changed_page_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let db = build_database(dir.path());
        let mut missed = Vec::new();
        for (n, corruption) in corruptions(&db).into_iter().enumerate() {
            let copy = corrupted_copy(
                &db,
                corruption.page,
                &format!("corrupt-{n}.db"),
                &corruption.edit,
            );
            assert_ne!(
                integrity_check(&copy),
                ["ok"],
                "{}: SQLite sees no corruption",
                corruption.what
            );

            let result = check(&copy, [corruption.page]);

            let named = format!("page {} (", corruption.page);
            let found = result.problems.iter().any(|problem| {
                problem.starts_with(&named) && problem.contains(&corruption.problem)
            });
            if !found {
                missed.push(format!(
                    "{} (page {}): {:?}",
                    corruption.what, corruption.page, result.problems
                ));
            }
        }
        assert!(missed.is_empty(), "not found:\n{}", missed.join("\n"));
    }

    #[test]
    fn a_corrupt_page_is_reported_only_when_it_is_among_the_changed_pages() {
        let dir = tempfile::tempdir().unwrap();
        let db = build_database(dir.path());
        let leaves = pages_of(&db, "accounts", "leaf");
        let (corrupt, other) = (leaves[leaves.len() / 2], leaves[leaves.len() / 3]);
        let copy = corrupted_copy(&db, corrupt, "corrupt.db", |page| put16(page, 8, 0xfff0));

        let without = check(&copy, [other]);
        let with = check(&copy, [other, corrupt]);

        assert_eq!(without.problems, Vec::<String>::new());
        assert_eq!(without.checked, 1);
        assert_eq!(with.checked, 2);
        assert!(
            with.problems
                .iter()
                .any(|problem| problem.starts_with(&format!("page {corrupt} ("))),
            "{:?}",
            with.problems
        );
    }

    /// One byte of a random page set to a random value, 120 times over (the same each
    /// run): the check never panics, never reports a problem where `PRAGMA
    /// integrity_check` finds none, and finds most of what it finds (what it misses is
    /// inside records: index entries that no longer match their rows).
    #[test]
    fn one_damaged_byte_is_never_a_panic_nor_a_false_alarm() {
        let dir = tempfile::tempdir().unwrap();
        let db = build_database(dir.path());
        let original = std::fs::read(&db).unwrap();
        let pages = original.len() / PAGE_SIZE;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below as u64) as usize
        };
        let copy = dir.path().join("damaged.db");
        let (mut sqlite_found, mut both_found) = (0, 0);
        for _ in 0..120 {
            let mut bytes = original.clone();
            // Half in page headers and cell pointers, where the structure is.
            let within = if random(2) == 0 {
                random(64)
            } else {
                random(PAGE_SIZE)
            };
            let at = random(pages) * PAGE_SIZE + within;
            bytes[at] = random(256) as u8;
            std::fs::write(&copy, bytes).unwrap();

            let result = check(&copy, 1..=pages as u32);

            if integrity_check(&copy) == ["ok"] {
                assert_eq!(result.problems, Vec::<String>::new(), "byte {at} damaged");
            } else {
                sqlite_found += 1;
                both_found += usize::from(!result.problems.is_empty());
            }
        }
        assert!(
            sqlite_found > 20 && both_found * 2 > sqlite_found,
            "SQLite found {sqlite_found} damaged copies, the check {both_found} of them"
        );
    }

    #[test]
    fn a_pending_wal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = build_database(dir.path());
        let wal = dir.path().join("test.db-wal");
        std::fs::write(&wal, b"").unwrap();
        assert!(
            check_changed_pages(&db, &BTreeSet::from([2])).is_ok(),
            "an empty -wal is no log"
        );
        std::fs::write(&wal, b"frames").unwrap();

        let error = check_changed_pages(&db, &BTreeSet::from([2])).unwrap_err();

        assert!(
            error.to_string().contains("test.db-wal is not empty"),
            "{error}"
        );
    }
}
