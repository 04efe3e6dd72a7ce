//! Step 10: the client bundles in the output directory.

use anyhow::Result;

use super::Ctx;
use crate::bundle;
use crate::lifecycle;
use crate::pki::{Action, PkiPaths};
use crate::render;

/// Step 10: the client bundles in the output directory (root only).
pub fn output(ctx: &mut Ctx<'_>) -> Result<()> {
    let host = ctx.sans()?.primary_name.clone();
    if ctx.opts.dry_run {
        let out = ctx.config.output_dir.display().to_string();
        for client in ctx.config.clients.clone() {
            let bundle = format!("{out}/{client}.tar.gz");
            if ctx.path(&bundle).is_file() {
                ctx.note(format!(
                    "{bundle} exists: rewritten only if its certificates change"
                ));
            } else {
                ctx.change(format!("write {bundle}"), |_| Ok(()))?;
            }
        }
        if ctx.path(render::FIRSTBOOT_DONE_PATH).is_file() {
            ctx.note(format!(
                "{} exists: first boot finished before",
                render::FIRSTBOOT_DONE_PATH
            ));
        } else {
            ctx.change(
                format!(
                    "write {out}/status.json, then {}",
                    render::FIRSTBOOT_DONE_PATH
                ),
                |_| Ok(()),
            )?;
        }
        return Ok(());
    }
    let paths = PkiPaths::new(ctx.root);
    let index = lifecycle::index::Index::load(&ctx.path(lifecycle::CLIENT_INDEX_PATH))?;
    let bundles = bundle::write_bundles(ctx.root, ctx.config, &host, &paths, &index.issuable())?;
    for b in &bundles {
        if b.action != Action::Kept {
            ctx.changes
                .push(format!("{} {}", b.action, b.path.display()));
        }
    }
    ctx.bundles = bundles;
    Ok(())
}
