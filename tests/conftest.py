"""Shared fixtures: the real data set, loaded once per test session; one smoke report built end
to end, shared by the tests that need a finished smoke run; and the `heavy` marker.

`make test-fast` runs ``pytest -m "not slow and not heavy"``, the inner loop; `make test` runs
every test. :data:`HEAVY` marks the tests it leaves out.
"""

import shutil

import pytest

from fmnist_utils import data

# The tests `make test-fast` leaves out, by file and test function (all its parametrizations):
# each took a second or more on the 2-core CPU (`pytest --durations=0 -m "not slow"`, machine
# loaded by other jobs) because it runs notebooks or the command line in another process, trains
# or times networks, or starts a fresh interpreter; together, over nine tenths of the time of
# the tests not marked slow. A new test that takes a second or more belongs here (or is
# decorated @pytest.mark.heavy); tests/test_fast_subset.py checks that each name here exists.
HEAVY = {
    "test_budget.py": (
        "test_a_budgeted_report_runs_only_what_fits_and_states_its_budget",
        "test_more_budget_never_gives_less_in_priority_order",
    ),
    "test_cli.py": (
        "test_module_entry_point_runs",
        "test_train_prints_test_accuracy",
    ),
    "test_compare.py": (
        "test_cnn_to_compare_reads_02s_checkpoint",
        "test_cnn_to_compare_trains_the_study_recipe_when_02_has_not_run",
        "test_fmnist_resnet18_trains_and_describes_itself_against_the_references",
        "test_probe_layers_match_a_direct_probe_and_mark_each_image",
        "test_representations_keep_order_keys_and_time_each_network",
    ),
    "test_data.py": (
        "test_search_order",
        "test_torchvision_layout_is_found",
    ),
    "test_device.py": ("test_fp16_training_uses_loss_scaling",),
    "test_estimate.py": ("test_measure_times_real_steps_on_this_device",),
    "test_features.py": (
        "test_a_shared_module_is_refused",
        "test_all_layers_come_from_one_pass_per_batch",
        "test_batch_size_does_not_change_the_result",
        "test_float_images_are_used_as_given",
        "test_max_spatial_average_pools_large_maps",
        "test_named_layers_match_a_manual_forward",
        "test_output_before_an_inplace_relu_is_kept",
        "test_probe_works_on_extracted_features",
    ),
    "test_improve.py": (
        "test_family_wise_error_of_the_primary_family_under_the_global_null",
        "test_run_rows_pairs_seeds_reads_each_split_once_and_reuses_a_cached_row",
        "test_seeds_of_a_row_are_the_single_runs",
    ),
    "test_layering.py": ("test_importing_the_figures_and_statistics_brings_nothing_of_the_pipeline",),
    "test_models.py": (
        "test_dropout_is_applied_in_training_only",
        "test_larger_kernels_keep_the_geometry",
    ),
    "test_notebooks.py": (
        "test_make_lab_serves_the_notebooks_headless",
        "test_papermill_kernels_talk_over_ipc_without_the_tcp_warning",
    ),
    "test_pipeline.py": (
        "test_a_change_reruns_what_reads_it_and_nothing_else",
        "test_failing_notebook_stops_the_pipeline_names_notebook_and_cell",
        "test_pipeline_reuses_what_is_up_to_date_and_reruns_from_the_first_change",
        "test_runner_streams_the_lines_a_notebook_prints_as_it_runs",
    ),
    "test_progress.py": ("test_fit_prints_one_line_per_epoch_with_elapsed_time_and_eta",),
    "test_recipe.py": ("test_modern_preset_trains_with_every_option",),
    "test_report_pdf.py": ("test_pdf_has_bookmarks_page_numbers_and_relative_links",),
    "test_robust.py": (
        "test_a_collapse_to_chance_is_flagged_and_warned",
        "test_a_damaged_stamp_keeps_the_finished_work_and_says_why",
        "test_a_fault_inside_a_notebook_has_the_clis_status_and_one_line",
        "test_a_folder_holding_the_users_files_is_not_adopted",
        "test_a_refusal_leaves_the_finished_run_and_report_byte_for_byte",
        "test_a_run_folder_given_as_the_report_folder_is_refused_byte_for_byte",
        "test_a_second_run_on_a_locked_folder_names_the_holder_and_exits",
        "test_another_profile_in_the_run_folder_needs_force",
        "test_full_disk_for_the_bookkeeping_too_keeps_the_original_error",
        "test_full_disk_for_the_final_stamp",
        "test_full_disk_while_checkpointing_leaves_the_last_checkpoint_and_no_debris",
        "test_killed_pdf_print_leaves_no_temporary_pdf",
        "test_make_data_never_installs_over_a_copy_it_found_and_refused",
        "test_results_are_set_aside_until_their_successor_exists",
        "test_resuming_on_other_data_is_refused",
        "test_reuse_covers_data_location_content_weights_and_environment",
        "test_shuffled_labels_or_blank_images_are_caught_by_the_sums",
        "test_sigterm_and_sigint_give_their_status_one_line_and_a_clean_kernel_shutdown",
        "test_train_out_ending_in_a_slash_is_a_folder_and_records_the_data",
        "test_unverified_data_is_recorded_in_train_results",
        "test_weights_that_turn_non_finite_after_the_last_step_are_caught",
    ),
    "test_stacked.py": (
        "test_on_diverged_raise_names_the_unit",
        "test_on_diverged_record_stops_only_that_unit",
        "test_stack_equals_separate_fit_runs_float64",
        "test_stack_equals_separate_fit_runs_fp32",
        "test_stack_evaluates_as_evaluate_with_tta_flip",
        "test_stack_of_modern_recipe_equals_separate_fit_runs_float64",
        "test_stack_of_modern_recipe_equals_separate_fit_runs_fp32",
        "test_stack_with_dropout_draws_fits_masks_on_cpu",
        "test_stack_with_modern_option_equals_separate_fit_runs_float64",
    ),
    "test_stats.py": ("test_mantel_monte_carlo_agrees_with_enumeration",),
    "test_sweep.py": (
        "test_a_dead_workers_trial_resumes_with_its_finished_fold",
        "test_claims_on_sqlite_are_atomic",
        "test_summary_equals_the_stored_trials",
        "test_tpe_proposes_distinct_configurations_and_resumes",
    ),
    "test_train.py": (
        "test_checkpoint_resumes_exactly",
        "test_evaluate_matches_a_plain_forward",
        "test_every_optimizer_takes_its_own_step",
        "test_l1_shrinks_weights",
        "test_one_epoch_learns",
        "test_same_seed_same_history",
    ),
    "test_verify_gpu.py": ("test_run_command_kills_the_whole_group_at_its_budget",),
}


def pytest_collection_modifyitems(config, items):
    """Mark the tests of :data:`HEAVY` `heavy` (a parametrized test by its function's name)."""
    for item in items:
        name = getattr(item, "originalname", None) or item.name
        if name in HEAVY.get(item.path.name, ()):
            item.add_marker(pytest.mark.heavy)


@pytest.fixture(scope="session")
def fmnist():
    """The real Fashion-MNIST (from data/, FMNIST_DATA or Debian's package; never downloaded)."""
    return data.load_fashion_mnist(download_ok=False)


@pytest.fixture(scope="session")
def smoke_build(tmp_path_factory):
    """``pipeline.build``'s return for one smoke report, every notebook executed, with ``run`` and
    ``report`` (its folders) added; the PDF too where Chromium and pdftotext are installed.

    Built once: it is the suite's longest step, and the tests that only need a finished smoke run
    (verify-gpu's report stage, which then reuses every notebook) need not build another.
    """
    from fmnist_utils import pipeline, report

    root = tmp_path_factory.mktemp("smoke")
    run, out = root / "run", root / "report"
    pdf = report.find_chromium() is not None and shutil.which("pdftotext") is not None
    built = pipeline.build("smoke", run, out, pdf=pdf, progress=False, log=lambda m: None)
    return {**built, "run": run, "report": out}


@pytest.fixture
def report_cli(monkeypatch):
    """Return ``run(argv) -> (status, keywords)``: the `report` command line (pipeline.cli) on
    ``argv`` with pipeline.build replaced by a stub that records the keywords it was given."""
    import argparse
    from pathlib import Path

    from fmnist_utils import pipeline

    seen = {}

    def build(*args, **kwargs):
        seen.clear()
        seen.update(kwargs)
        return {"stamps": [], "seconds": 0.0, "html": Path("r.html"), "pdf": None}

    monkeypatch.setattr(pipeline, "build", build)
    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)

    def run(argv: list[str]) -> tuple[int, dict]:
        return pipeline.cli(parser.parse_args(argv)), dict(seen)

    return run
