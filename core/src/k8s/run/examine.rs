//! Reading where runs' Jobs stand without following them: for a worker that starts while runs
//! are in flight, and for judging a Job that ended while nobody followed it.
//!
//! Runs are read by their flow-run label, a batch of runs per request (two requests per
//! batch: Jobs and pods), never by listing a namespace: it may hold thousands of finished
//! Prefect Jobs.

use super::state::{job_end_of, EndedPod, JobEnd, RunState};
use super::RunOutcome;
use crate::k8s::cluster::Cluster;
use crate::k8s::error::K8sError;
use crate::k8s::logs::container_log_tail;
use crate::k8s::watch::{ObjectEvent, FLOW_RUN_LABEL, RESYNC_BATCH};
use crate::k8s::watched::{WatchedJob, WatchedPod};
use crate::manifest::PREFECT_CONTAINER;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use std::collections::HashMap;

/// A run to read: its flow-run id and the name of the Job it is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunToExamine {
    /// The flow run's id.
    pub flow_run_id: String,
    /// Its Job's name (from its infrastructure pid).
    pub job_name: String,
}

/// Where one run's Job stands.
#[derive(Debug, Clone, PartialEq)]
pub struct RunExamination {
    /// The flow run's id.
    pub flow_run_id: String,
    /// The Job's name.
    pub job_name: String,
    /// The Job exists.
    pub found: bool,
    /// How it ended (`Deleted` when it is not found); None while it runs or waits.
    pub end: Option<JobEnd>,
    /// The exit code and what happened, once it ended.
    pub outcome: Option<RunOutcome>,
    /// The pod whose end was the Job's, when one is left.
    pub ended_pod: Option<EndedPod>,
    /// Another Job of the same flow run is running or succeeded: the run went on without this
    /// one (an evicted run that rescheduled itself).
    pub other_job_alive: bool,
}

/// Reads the Jobs and pods of `runs` in `namespace`, [`RESYNC_BATCH`] runs per request.
pub async fn examine_runs(
    cluster: &Cluster,
    namespace: &str,
    runs: &[RunToExamine],
) -> Result<Vec<RunExamination>, K8sError> {
    let jobs: Api<WatchedJob> = Api::namespaced(cluster.client(), namespace);
    let pods: Api<WatchedPod> = Api::namespaced(cluster.client(), namespace);
    let mut examinations = Vec::with_capacity(runs.len());
    for batch in runs.chunks(RESYNC_BATCH) {
        let mut ids: Vec<&str> = batch.iter().map(|run| run.flow_run_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let selector = format!("{FLOW_RUN_LABEL} in ({})", ids.join(","));
        let params = ListParams::default().labels(&selector);
        let batch_jobs = jobs
            .list(&params)
            .await
            .map_err(|error| K8sError::from_kube(error, "list", "Jobs of flow runs"))?
            .items;
        let batch_pods = pods
            .list(&params)
            .await
            .map_err(|error| K8sError::from_kube(error, "list", "pods of flow runs"))?
            .items;
        let jobs_by_run = by_run(batch_jobs.into_iter().map(|job| job.0), |job| &job.metadata);
        let pods_by_run = by_run(batch_pods.into_iter().map(|pod| pod.0), |pod| &pod.metadata);
        for run in batch {
            examinations.push(examine(
                run,
                jobs_by_run
                    .get(&run.flow_run_id)
                    .cloned()
                    .unwrap_or_default(),
                pods_by_run
                    .get(&run.flow_run_id)
                    .cloned()
                    .unwrap_or_default(),
            ));
        }
    }
    Ok(examinations)
}

fn by_run<T>(
    objects: impl Iterator<Item = T>,
    meta: impl Fn(&T) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> HashMap<String, Vec<T>> {
    let mut grouped: HashMap<String, Vec<T>> = HashMap::new();
    for object in objects {
        if let Some(run) = meta(&object)
            .labels
            .as_ref()
            .and_then(|labels| labels.get(FLOW_RUN_LABEL))
            .cloned()
        {
            grouped.entry(run).or_default().push(object);
        }
    }
    grouped
}

/// Where `run` stands, given every Job and pod carrying its flow-run id.
pub fn examine(run: &RunToExamine, jobs: Vec<Job>, pods: Vec<Pod>) -> RunExamination {
    let name = run.job_name.as_str();
    let found = jobs
        .iter()
        .any(|job| job.metadata.name.as_deref() == Some(name));
    let other_job_alive = jobs.iter().any(|job| {
        job.metadata.name.as_deref() != Some(name)
            && match job_end_of(job) {
                Some(JobEnd::Complete) => true,
                Some(_) => false,
                None => job.metadata.deletion_timestamp.is_none(),
            }
    });
    let mut state = RunState::new(name);
    state.apply_job(ObjectEvent::Resynced(jobs));
    state.apply_pod(ObjectEvent::Resynced(pods));
    let end = if found {
        state.job_end()
    } else {
        Some(JobEnd::Deleted)
    };
    let outcome = end.as_ref().map(|end| state.outcome(end));
    // A run still going has no ended pod; one with a Job gone may still have its pods.
    let ended_pod = end.as_ref().and_then(|end| state.ended_pod(end));
    RunExamination {
        flow_run_id: run.flow_run_id.clone(),
        job_name: run.job_name.clone(),
        found,
        end,
        outcome,
        ended_pod,
        other_job_alive,
    }
}

/// The last `lines` lines of the flow container of the pod that ended the run's Job (the
/// previous container's after a restart), each with its time; empty when no pod is left.
pub async fn crashed_run_log_tail(
    cluster: &Cluster,
    namespace: &str,
    run: &RunToExamine,
    lines: i64,
) -> Result<Vec<(Option<String>, String)>, K8sError> {
    let examination = examine_runs(cluster, namespace, std::slice::from_ref(run))
        .await?
        .pop();
    let Some(pod) = examination.and_then(|examination| examination.ended_pod) else {
        return Ok(Vec::new());
    };
    let pods: Api<Pod> = Api::namespaced(cluster.client(), namespace);
    match container_log_tail(&pods, &pod.name, PREFECT_CONTAINER, lines, pod.previous_log).await {
        // The pod went in the meantime (a TTL, a cascading deletion): nothing to tell.
        Err(error) if error.status_code() == Some(404) => Ok(Vec::new()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run() -> RunToExamine {
        RunToExamine {
            flow_run_id: "f1".into(),
            job_name: "job-a".into(),
        }
    }

    fn job(name: &str, status: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {FLOW_RUN_LABEL: "f1"}},
            "spec": {"backoffLimit": 0},
            "status": status,
        }))
        .unwrap()
    }

    fn pod(job: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{job}-x1"), "uid": "p1",
                         "creationTimestamp": "2026-12-02T10:00:00Z",
                         "labels": {FLOW_RUN_LABEL: "f1", "job-name": job}},
            "status": status,
        }))
        .unwrap()
    }

    fn failed() -> serde_json::Value {
        json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]})
    }

    #[test]
    fn an_oom_killed_pod_names_its_reason_and_code() {
        let oom = json!({"phase": "Failed", "containerStatuses": [{
            "name": "prefect-job", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]});
        let examination = examine(
            &run(),
            vec![job("job-a", failed())],
            vec![pod("job-a", oom)],
        );
        assert!(examination.found);
        assert_eq!(
            examination.end,
            Some(JobEnd::Failed("BackoffLimitExceeded".into()))
        );
        assert_eq!(examination.outcome.unwrap().exit_code, 137);
        let ended = examination.ended_pod.unwrap();
        assert_eq!(ended.name, "job-a-x1");
        assert_eq!(ended.reason.as_deref(), Some("OOMKilled"));
        assert!(!ended.previous_log);
        assert!(!examination.other_job_alive);
    }

    #[test]
    fn a_job_not_found_is_deleted_and_a_running_one_has_not_ended() {
        let gone = examine(&run(), vec![], vec![]);
        assert!(!gone.found);
        assert_eq!(gone.end, Some(JobEnd::Deleted));
        assert_eq!(gone.outcome.unwrap().exit_code, -1);
        let running = examine(&run(), vec![job("job-a", json!({"active": 1}))], vec![]);
        assert_eq!(running.end, None);
        assert_eq!(running.outcome, None);
    }

    #[test]
    fn another_running_or_succeeded_job_of_the_run_counts_as_alive_a_failed_one_not() {
        let with = |other: serde_json::Value| {
            examine(
                &run(),
                vec![job("job-a", failed()), job("job-b", other)],
                vec![],
            )
            .other_job_alive
        };
        assert!(with(json!({"active": 1})));
        assert!(with(
            json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
        ));
        assert!(!with(failed()));
    }

    #[test]
    fn a_restarted_container_that_waits_has_its_last_words_in_the_previous_log() {
        let crash_loop = json!({"phase": "Running", "containerStatuses": [{
            "name": "prefect-job", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]});
        let examination = examine(
            &run(),
            vec![job("job-a", failed())],
            vec![pod("job-a", crash_loop)],
        );
        let ended = examination.ended_pod.unwrap();
        assert!(ended.previous_log);
        assert_eq!(ended.reason.as_deref(), Some("Error"));
    }
}
